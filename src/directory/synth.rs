//! Realistic NPPES files at full scale, for import benchmarks: the real column layout
//! (330 npidata columns, 19 endpoint columns, every value quoted as CMS does), valid
//! NPIs, a mix of individuals, organisations and deactivated NPIs, and endpoints of every
//! type. Deterministic for a given seed. No real person or organisation.

use super::npi::Npi;
use std::io::Write;

/// The `npidata_pfile` header, built from the layout in the CMS readme (standards §5.4).
pub fn npidata_header() -> Vec<String> {
    let fixed = [
        "NPI",
        "Entity Type Code",
        "Replacement NPI",
        "Employer Identification Number (EIN)",
        "Provider Organization Name (Legal Business Name)",
        "Provider Last Name (Legal Name)",
        "Provider First Name",
        "Provider Middle Name",
        "Provider Name Prefix Text",
        "Provider Name Suffix Text",
        "Provider Credential Text",
        "Provider Other Organization Name",
        "Provider Other Organization Name Type Code",
        "Provider Other Last Name",
        "Provider Other First Name",
        "Provider Other Middle Name",
        "Provider Other Name Prefix Text",
        "Provider Other Name Suffix Text",
        "Provider Other Credential Text",
        "Provider Other Last Name Type Code",
        "Provider First Line Business Mailing Address",
        "Provider Second Line Business Mailing Address",
        "Provider Business Mailing Address City Name",
        "Provider Business Mailing Address State Name",
        "Provider Business Mailing Address Postal Code",
        "Provider Business Mailing Address Country Code (If outside U.S.)",
        "Provider Business Mailing Address Telephone Number",
        "Provider Business Mailing Address Fax Number",
        "Provider First Line Business Practice Location Address",
        "Provider Second Line Business Practice Location Address",
        "Provider Business Practice Location Address City Name",
        "Provider Business Practice Location Address State Name",
        "Provider Business Practice Location Address Postal Code",
        "Provider Business Practice Location Address Country Code (If outside U.S.)",
        "Provider Business Practice Location Address Telephone Number",
        "Provider Business Practice Location Address Fax Number",
        "Provider Enumeration Date",
        "Last Update Date",
        "NPI Deactivation Reason Code",
        "NPI Deactivation Date",
        "NPI Reactivation Date",
        "Provider Gender Code",
        "Authorized Official Last Name",
        "Authorized Official First Name",
        "Authorized Official Middle Name",
        "Authorized Official Title or Position",
        "Authorized Official Telephone Number",
    ];
    let mut h: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    for n in 1..=15 {
        h.push(format!("Healthcare Provider Taxonomy Code_{n}"));
        h.push(format!("Provider License Number_{n}"));
        h.push(format!("Provider License Number State Code_{n}"));
        h.push(format!("Healthcare Provider Primary Taxonomy Switch_{n}"));
    }
    for n in 1..=50 {
        h.push(format!("Other Provider Identifier_{n}"));
        h.push(format!("Other Provider Identifier Type Code_{n}"));
        h.push(format!("Other Provider Identifier State_{n}"));
        h.push(format!("Other Provider Identifier Issuer_{n}"));
    }
    for s in [
        "Is Sole Proprietor",
        "Is Organization Subpart",
        "Parent Organization LBN",
        "Parent Organization TIN",
        "Authorized Official Name Prefix Text",
        "Authorized Official Name Suffix Text",
        "Authorized Official Credential Text",
    ] {
        h.push(s.to_string());
    }
    for n in 1..=15 {
        h.push(format!("Healthcare Provider Taxonomy Group_{n}"));
    }
    h.push("Certification Date".to_string());
    h
}

/// The `endpoint_pfile` header (standards §5.2, CMS spelling).
pub const ENDPOINT_HEADER: [&str; 19] = [
    "NPI",
    "Endpoint Type",
    "Endpoint Type Description",
    "Endpoint",
    "Affiliation",
    "Endpoint Description",
    "Affiliation Legal Business Name",
    "Use Code",
    "Use Description",
    "Other Use Description",
    "Content Type",
    "Content Description",
    "Other Content Description",
    "Affiliation Address Line One",
    "Affiliation Address Line Two",
    "Affiliation Address City",
    "Affiliation Address State",
    "Affiliation Address Country",
    "Affiliation Address Line Postal Code",
];

/// splitmix64: enough randomness for test data, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const LAST: &[&str] = &[
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "RODRIGUEZ",
    "MARTINEZ",
    "HERNANDEZ",
    "LOPEZ",
    "GONZALEZ",
    "WILSON",
    "ANDERSON",
    "THOMAS",
    "TAYLOR",
    "MOORE",
    "JACKSON",
    "MARTIN",
    "LEE",
    "PEREZ",
    "THOMPSON",
    "WHITE",
    "HARRIS",
    "O'BRIEN",
    "NGUYEN",
    "KIM",
    "PATEL",
    "SMITH-JONES",
];
const FIRST: &[&str] = &[
    "JAMES",
    "MARY",
    "ROBERT",
    "PATRICIA",
    "JOHN",
    "JENNIFER",
    "MICHAEL",
    "LINDA",
    "DAVID",
    "ELIZABETH",
    "WILLIAM",
    "BARBARA",
    "RICHARD",
    "SUSAN",
    "JOSEPH",
    "JESSICA",
    "PRIYA",
    "WEI",
    "JOSE",
    "ANA",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("SPRINGFIELD", "IL", "627011234"),
    ("FAYETTEVILLE", "NC", "283044552"),
    ("COLUMBUS", "OH", "432151000"),
    ("BALTIMORE", "MD", "212011500"),
    ("PORTLAND", "OR", "972042000"),
    ("AUSTIN", "TX", "787013300"),
    ("DETROIT", "MI", "482261000"),
    ("DENVER", "CO", "802021200"),
];
const TAXONOMY_1: &[&str] = &[
    "207Q00000X",
    "207R00000X",
    "208000000X",
    "208D00000X",
    "363LF0000X",
    "363LP2300X",
    "363A00000X",
    "207RC0000X",
    "2084P0800X",
    "207X00000X",
];
const TAXONOMY_2: &[&str] = &[
    "261QP2300X",
    "261QF0400X",
    "261QR1300X",
    "314000000X",
    "251E00000X",
    "283X00000X",
    "282E00000X",
    "251G00000X",
    "282N00000X",
    "193200000X",
];
const CREDENTIAL: &[&str] = &["MD", "DO", "NP", "PA-C", "M.D.", "FNP-BC", ""];
const ORG_WORDS: &[&str] = &[
    "FAMILY PRACTICE",
    "PRIMARY CARE ASSOCIATES",
    "HOME HEALTH",
    "REHABILITATION CENTER",
    "MEDICAL GROUP",
    "COMMUNITY HEALTH CENTER",
    "SKILLED NURSING",
    "PEDIATRICS",
];
const HIE: &[&str] = &[
    "STATEWIDE HEALTH INFORMATION EXCHANGE",
    "REGIONAL HIE NETWORK",
    "EHR VENDOR CLOUD SERVICES",
];

/// NPI number `i` of a synthetic file: the same sequence in both files, so endpoints
/// refer to providers that exist.
pub fn synthetic_npi(i: u64) -> Npi {
    Npi::from_base(100_000_000 + i as u32)
}

fn date(rng: &mut Rng, from_year: u64) -> String {
    format!(
        "{:02}/{:02}/{}",
        1 + rng.below(12),
        1 + rng.below(28),
        from_year + rng.below(2026 - from_year)
    )
}

pub fn write_npidata<W: Write>(out: W, providers: u64, seed: u64) -> csv::Result<()> {
    let header = npidata_header();
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(out);
    w.write_record(&header)?;
    let mut rng = Rng(seed);
    let mut row: Vec<String> = vec![String::new(); header.len()];
    for i in 0..providers {
        row.iter_mut().for_each(String::clear);
        row[0] = synthetic_npi(i).to_string();
        let roll = rng.below(1000);
        if roll < 8 {
            // Deactivated: NPI and the deactivation date only, as CMS publishes them.
            row[38] = rng.pick(&["DT", "DB", "FR", "OT"]).to_string();
            row[39] = date(&mut rng, 2008);
            w.write_record(&row)?;
            continue;
        }
        let org = roll >= 750;
        let (city, state, zip) = CITIES[rng.below(CITIES.len() as u64) as usize];
        let street = format!("{} {} ST", 100 + rng.below(9800), rng.pick(LAST));
        let phone = format!("{}555{:04}", 200 + rng.below(700), rng.below(10_000));
        row[1] = if org { "2" } else { "1" }.to_string();
        if org {
            row[4] = format!("{} {}", rng.pick(LAST), rng.pick(ORG_WORDS));
            row[42] = rng.pick(LAST).to_string();
            row[43] = rng.pick(FIRST).to_string();
            row[45] = "ADMINISTRATOR".to_string();
            row[46] = phone.clone();
        } else {
            row[5] = rng.pick(LAST).to_string();
            row[6] = rng.pick(FIRST).to_string();
            row[7] = if rng.below(2) == 0 {
                rng.pick(FIRST)[..1].to_string()
            } else {
                String::new()
            };
            row[10] = rng.pick(CREDENTIAL).to_string();
            row[41] = rng.pick(&["M", "F"]).to_string();
        }
        for (a, b) in [(20, 28), (22, 30), (23, 31), (24, 32), (25, 33), (26, 34)] {
            let v = match b {
                28 => street.clone(),
                30 => city.to_string(),
                31 => state.to_string(),
                32 => zip.to_string(),
                33 => "US".to_string(),
                _ => phone.clone(),
            };
            row[a] = v.clone();
            row[b] = v;
        }
        row[36] = date(&mut rng, 2005);
        row[37] = date(&mut rng, 2015);
        let taxonomies = 1 + rng.below(3) as usize;
        let primary = rng.below(taxonomies as u64) as usize;
        for t in 0..taxonomies {
            let base = 47 + 4 * t;
            row[base] = rng
                .pick(if org { TAXONOMY_2 } else { TAXONOMY_1 })
                .to_string();
            row[base + 1] = format!("L{:06}", rng.below(1_000_000));
            row[base + 2] = state.to_string();
            row[base + 3] = if t == primary { "Y" } else { "N" }.to_string();
        }
        if rng.below(3) == 0 {
            row[107] = format!("{:08}", rng.below(100_000_000));
            row[108] = "05".to_string();
            row[109] = state.to_string();
        }
        row[307] = if org { "X" } else { rng.pick(&["Y", "N"]) }.to_string();
        row[308] = if org { "N" } else { "" }.to_string();
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

pub fn write_endpoints<W: Write>(
    out: W,
    endpoints: u64,
    providers: u64,
    seed: u64,
) -> csv::Result<()> {
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(out);
    w.write_record(ENDPOINT_HEADER)?;
    let mut rng = Rng(seed ^ 0x5eed);
    let providers = providers.max(1);
    for _ in 0..endpoints {
        let i = rng.below(providers);
        let npi = synthetic_npi(i).to_string();
        let practice = format!("practice{i}");
        let roll = rng.below(100);
        let (kind, desc, value) = match roll {
            0..=69 => (
                "DIRECT",
                "Direct Messaging Address",
                format!(
                    "{}.{}@direct.{practice}.example.org",
                    rng.pick(FIRST),
                    rng.pick(LAST)
                )
                .to_ascii_lowercase()
                .replace('\'', ""),
            ),
            70..=89 => (
                "FHIR",
                "FHIR URL",
                format!(
                    "https://fhir.ehr{}.example.com/r4/{practice}",
                    rng.below(50)
                ),
            ),
            90..=94 => (
                "REST",
                "RESTful URL",
                format!("https://api.{practice}.example.net/notify"),
            ),
            _ => (
                "OTHERS",
                "Other URL",
                format!("https://portal.{practice}.example.com/"),
            ),
        };
        let affiliated = rng.below(4) == 0;
        let (city, state, zip) = CITIES[rng.below(CITIES.len() as u64) as usize];
        let use_code = rng.pick(&["DIRECT", "HIE", "OTHER"]);
        let use_desc = match use_code {
            "DIRECT" => "Direct",
            "HIE" => "Health Information Exchange (HIE)",
            _ => "Other",
        };
        w.write_record([
            npi.as_str(),
            kind,
            desc,
            value.as_str(),
            if affiliated { "Y" } else { "N" },
            "",
            if affiliated { rng.pick(HIE) } else { "" },
            use_code,
            use_desc,
            if use_code == "OTHER" {
                "Care coordination"
            } else {
                ""
            },
            "CSV",
            "CSV",
            "",
            "1 HEALTHWAY PLAZA",
            "",
            city,
            state,
            "US",
            zip,
        ])?;
    }
    w.flush()?;
    Ok(())
}
