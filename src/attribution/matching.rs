//! Demographic patient matching: normalised names, a score per candidate, and the
//! reasons behind it. Deterministic identifier matching happens before this; this is
//! the fallback, and it never guesses: an ambiguous or weak best match gives nothing.
//!
//! Weights (documented in docs/attribution.md; tuned so that date of birth plus exact
//! family and given names pass the default threshold, and twins do not):
//!
//! | evidence | points |
//! |---|---|
//! | birth date equal (required to be a candidate) | +4 |
//! | family name equal / shares a part / similar / differs | +4 / +3 / +2.5 / -4 |
//! | given name equal / first name equal / similar / initial or short form / differs | +3 / +2.5 / +2 / +1 / -3 |
//! | given and family swapped (both equal) | +6 in place of the two name scores |
//! | sex equal / differs (both known) | +1 / -5 |
//! | postal code (5 digits) equal | +1 |

use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

/// Upper-case ASCII letters and digits in space-separated tokens: diacritics dropped
/// (José = JOSE), apostrophes and periods removed (O'Brien = OBRIEN, St. = ST),
/// hyphens and other punctuation split tokens (Smith-Jones = SMITH JONES).
pub fn normalize_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.nfkd() {
        if unicode_normalization::char::is_combining_mark(c) {
            continue;
        }
        let mapped: &str = match c {
            'ß' => "SS",
            'æ' | 'Æ' => "AE",
            'ø' | 'Ø' => "O",
            'œ' | 'Œ' => "OE",
            'ł' | 'Ł' => "L",
            'đ' | 'Đ' => "D",
            _ => "",
        };
        if !mapped.is_empty() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push_str(mapped);
        } else if c.is_ascii_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c.to_ascii_uppercase());
        } else if matches!(c, '\'' | '’' | '`' | '.') {
            // Part of the name, not a separator.
        } else {
            pending_space = true;
        }
    }
    out
}

/// The demographic facts compared, already normalised.
#[derive(Clone, Default)]
pub struct Demographics {
    pub family: String,
    pub given: String,
    pub birth_date: String,
    pub sex: String,
    pub postal_code: String,
}

impl Demographics {
    pub fn new(family: &str, given: &str, birth_date: &str, sex: &str, postal: &str) -> Self {
        Self::normalized(
            &normalize_name(family),
            &normalize_name(given),
            birth_date,
            sex,
            postal,
        )
    }

    /// From names already normalised (the roster stores them so).
    pub fn normalized(
        family: &str,
        given: &str,
        birth_date: &str,
        sex: &str,
        postal: &str,
    ) -> Self {
        Demographics {
            family: family.to_string(),
            given: given.to_string(),
            birth_date: birth_date.trim().to_string(),
            sex: normalize_sex(sex).to_string(),
            postal_code: postal
                .trim()
                .chars()
                .filter(char::is_ascii_digit)
                .take(5)
                .collect(),
        }
    }
}

/// `M`, `F`, or empty for unknown / other / not given.
pub fn normalize_sex(s: &str) -> &'static str {
    let s = s.trim();
    if s.eq_ignore_ascii_case("M") || s.eq_ignore_ascii_case("MALE") {
        "M"
    } else if s.eq_ignore_ascii_case("F") || s.eq_ignore_ascii_case("FEMALE") {
        "F"
    } else {
        ""
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub score: f64,
    pub reasons: Vec<String>,
}

/// Thresholds from `[attribution]`.
#[derive(Clone, Copy, Debug)]
pub struct MatchPolicy {
    /// A demographic match needs at least this score.
    pub threshold: f64,
    /// The best match must beat the next candidate by at least this much.
    pub ambiguity_margin: f64,
}

impl Default for MatchPolicy {
    fn default() -> Self {
        MatchPolicy {
            threshold: 10.0,
            ambiguity_margin: 2.0,
        }
    }
}

fn similar(a: &str, b: &str) -> bool {
    strsim::jaro_winkler(a, b) >= 0.92
}

enum NameMatch {
    Equal,
    SharesPart,
    Similar,
    Short,
    Differs,
}

fn family_match(a: &str, b: &str) -> NameMatch {
    if a.is_empty() || b.is_empty() {
        return NameMatch::Differs;
    }
    if a == b {
        return NameMatch::Equal;
    }
    // Hyphenated or double surnames: one name's parts all appear in the other's.
    let (ta, tb): (Vec<&str>, Vec<&str>) = (a.split(' ').collect(), b.split(' ').collect());
    let compact = |t: &[&str]| t.concat();
    if ta.iter().all(|t| tb.contains(t))
        || tb.iter().all(|t| ta.contains(t))
        || compact(&ta) == compact(&tb)
    {
        return NameMatch::SharesPart;
    }
    if similar(a, b) {
        return NameMatch::Similar;
    }
    NameMatch::Differs
}

fn given_match(a: &str, b: &str) -> NameMatch {
    if a.is_empty() || b.is_empty() {
        return NameMatch::Differs;
    }
    if a == b {
        return NameMatch::Equal;
    }
    let (fa, fb) = (
        a.split(' ').next().unwrap_or(a),
        b.split(' ').next().unwrap_or(b),
    );
    if fa == fb {
        return NameMatch::SharesPart;
    }
    if similar(a, b) {
        return NameMatch::Similar;
    }
    // An initial, or a short form that is a prefix (CHRIS / CHRISTOPHER).
    if fa.starts_with(fb) || fb.starts_with(fa) {
        return NameMatch::Short;
    }
    NameMatch::Differs
}

/// Scores a roster candidate against the message's patient, with the reasons.
pub fn score(msg: &Demographics, cand: &View) -> Score {
    let mut reasons = Vec::new();
    let score = tally(msg, cand, |points, why| {
        reasons.push(format!("{points:+} {why}"))
    });
    Score { score, reasons }
}

/// The score alone, for a candidate as the roster stores it (names normalised): what
/// routing asks of each of the ~60 roster rows sharing a birth date, keeping no reasons.
pub fn points(msg: &Demographics, cand: &View) -> f64 {
    tally(msg, cand, |_, _| {})
}

/// The best score a candidate can reach when its sex and the message's are both known
/// and differ: birth date, both names equal and the postal code, less the sex penalty
/// (the weights of the table at the top; a unit test holds the two together).
const BEST_WITH_SEX_DIFFERING: f64 = 4.0 + 4.0 + 3.0 - 5.0 + 1.0;

/// Whether a candidate of the other sex can change the decision under `policy`. One
/// scoring below `threshold - ambiguity_margin` can neither be chosen nor make the
/// choice ambiguous, so when this is false routing need not read such rows at all.
pub fn other_sex_can_matter(policy: MatchPolicy) -> bool {
    can_matter(BEST_WITH_SEX_DIFFERING, policy)
}

/// Whether a candidate scoring `points` can change the decision under `policy`: one
/// below `threshold - ambiguity_margin` can neither be chosen nor make the choice
/// ambiguous ([`decide`]), so routing need not build its row.
pub fn can_matter(points: f64, policy: MatchPolicy) -> bool {
    points >= policy.threshold - policy.ambiguity_margin.max(0.0)
}

/// A roster candidate's facts, borrowed: names normalised, sex and postal code raw.
pub struct View<'a> {
    pub family: &'a str,
    pub given: &'a str,
    pub birth_date: &'a str,
    pub sex: &'a str,
    pub postal_code: &'a str,
}

/// The weights of the table at the top, each one told to `why` as it is added.
fn tally(msg: &Demographics, cand: &View, mut why: impl FnMut(f64, &'static str)) -> f64 {
    let mut s = 0.0;
    let mut add = |points: f64, reason: &'static str| {
        s += points;
        why(points, reason);
    };
    let cand_sex = normalize_sex(cand.sex);
    // The first five digits, as `Demographics` keeps them.
    let cand_zip = cand
        .postal_code
        .trim()
        .chars()
        .filter(char::is_ascii_digit)
        .take(5);
    if !msg.birth_date.is_empty() && msg.birth_date == cand.birth_date.trim() {
        add(4.0, "birth date equal");
    } else {
        add(-10.0, "birth date differs or is missing");
    }
    let swapped = msg.family == cand.given
        && msg.given == cand.family
        && !msg.family.is_empty()
        && !msg.given.is_empty()
        && msg.family != msg.given;
    if swapped {
        add(6.0, "given and family names swapped");
    } else {
        match family_match(&msg.family, cand.family) {
            NameMatch::Equal => add(4.0, "family name equal"),
            NameMatch::SharesPart => add(3.0, "family name shares a part (hyphenated or double)"),
            NameMatch::Similar => add(2.5, "family name similar (spelling)"),
            _ => add(-4.0, "family name differs"),
        }
        match given_match(&msg.given, cand.given) {
            NameMatch::Equal => add(3.0, "given name equal"),
            NameMatch::SharesPart => add(2.5, "first given name equal"),
            NameMatch::Similar => add(2.0, "given name similar (spelling)"),
            NameMatch::Short => add(1.0, "given name is an initial or short form"),
            NameMatch::Differs => add(-3.0, "given name differs"),
        }
    }
    match (msg.sex.as_str(), cand_sex) {
        ("", _) | (_, "") => {}
        (a, b) if a == b => add(1.0, "sex equal"),
        _ => add(-5.0, "sex differs"),
    }
    if msg.postal_code.len() == 5 && cand_zip.eq(msg.postal_code.chars()) {
        add(1.0, "postal code equal");
    }
    s
}

/// The decision over one roster's scored candidates: the index of the match, or why
/// there is none.
pub fn decide(scores: &[f64], policy: MatchPolicy) -> Result<usize, String> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let Some(&best) = order.first() else {
        return Err("no roster entry with this birth date".into());
    };
    if scores[best] < policy.threshold {
        return Err(format!(
            "best demographic score {:.1} is below the threshold {:.1}",
            scores[best], policy.threshold
        ));
    }
    if let Some(&second) = order.get(1) {
        if scores[best] - scores[second] < policy.ambiguity_margin {
            return Err(format!(
                "ambiguous: two candidates scored {:.1} and {:.1} (margin {:.1} needed)",
                scores[best], scores[second], policy.ambiguity_margin
            ));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(f: &str, g: &str, dob: &str, sex: &str, zip: &str) -> Demographics {
        Demographics::new(f, g, dob, sex, zip)
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_name("  O'Brien-Smith "), "OBRIEN SMITH");
        assert_eq!(normalize_name("José"), "JOSE");
        assert_eq!(normalize_name("Müller"), "MULLER");
        assert_eq!(normalize_name("Strauß"), "STRAUSS");
        assert_eq!(normalize_name("de la Cruz"), "DE LA CRUZ");
        assert_eq!(normalize_name("D’Angelo"), "DANGELO");
        assert_eq!(normalize_name("Ñúñez"), "NUNEZ");
        assert_eq!(normalize_name("St. John"), "ST JOHN");
    }

    fn view_of(d: &Demographics) -> View<'_> {
        View {
            family: &d.family,
            given: &d.given,
            birth_date: &d.birth_date,
            sex: &d.sex,
            postal_code: &d.postal_code,
        }
    }

    fn accept(m: &Demographics, cands: &[Demographics]) -> Result<usize, String> {
        let scores: Vec<f64> = cands.iter().map(|c| score(m, &view_of(c)).score).collect();
        decide(&scores, MatchPolicy::default())
    }

    #[test]
    fn tricky_names_still_match() {
        let roster = [d("O'Brien-Smith", "Anne", "1965-04-12", "F", "62701")];
        for (f, g) in [
            ("OBRIEN SMITH", "ANNE"),
            ("O'Brien", "Anne"),        // one half of a hyphenated name
            ("Obrien-Smith", "Anne M"), // middle initial in the given field
            ("Anne", "O'Brien-Smith"),  // swapped
        ] {
            assert_eq!(
                accept(&d(f, g, "1965-04-12", "F", "62701"), &roster),
                Ok(0),
                "{f}, {g}"
            );
        }
        let accents = [d("Núñez", "José", "1980-01-02", "M", "")];
        assert_eq!(
            accept(&d("NUNEZ", "JOSE", "1980-01-02", "M", ""), &accents),
            Ok(0)
        );
    }

    #[test]
    fn twins_are_told_apart_or_refused() {
        let twins = [
            d("Garcia", "Maria", "2001-06-01", "F", "62701"),
            d("Garcia", "Marta", "2001-06-01", "F", "62701"),
        ];
        // Full given name: the right twin, clearly.
        let m = d("GARCIA", "MARIA", "2001-06-01", "F", "62701");
        assert_eq!(accept(&m, &twins), Ok(0));
        // Only an initial: both fit, so nobody is chosen.
        let m = d("GARCIA", "M", "2001-06-01", "F", "62701");
        let err = accept(&m, &twins).unwrap_err();
        assert!(err.contains("ambiguous") || err.contains("below"), "{err}");
        // Twins of different sex with the same initial: sex decides.
        let twins = [
            d("Lee", "Jordan", "2010-03-03", "M", ""),
            d("Lee", "Jamie", "2010-03-03", "F", ""),
        ];
        assert_eq!(accept(&d("LEE", "J", "2010-03-03", "F", ""), &twins), Ok(1));
        // ... but not when the message does not say.
        assert!(accept(&d("LEE", "J", "2010-03-03", "", ""), &twins).is_err());
    }

    /// Routing scores roster rows as stored (sex and postal code raw) without reasons;
    /// it must reach the same score as the explained path, which normalises first.
    #[test]
    fn points_equal_the_explained_score() {
        let msg = d("Garcia", "Maria", "2001-06-01", "F", "62701");
        for (f, g, dob, sex, zip) in [
            ("GARCIA", "MARIA", "2001-06-01", " female ", "62701-1234"),
            ("GARCIA", "MARTA", " 2001-06-01", "f", "62702"),
            ("MARIA", "GARCIA", "2001-06-01", "", ""),
            ("GARCIA LOPEZ", "M", "2001-06-01", "Male", "6270"),
            ("GARCIA", "MARIA", "2001-06-02", "U", "62701"),
        ] {
            let view = View {
                family: f,
                given: g,
                birth_date: dob,
                sex,
                postal_code: zip,
            };
            let normalized = Demographics::normalized(f, g, dob, sex, zip);
            let explained = score(&msg, &view_of(&normalized));
            assert_eq!(points(&msg, &view), explained.score, "{f} {g} {sex} {zip}");
        }
    }

    #[test]
    fn a_candidate_of_the_other_sex_cannot_pass_the_default_policy() {
        let msg = d("Lee", "Jordan", "2010-03-03", "F", "62701");
        let mut best = f64::MIN;
        for (f, g) in [
            ("LEE", "JORDAN"),
            ("JORDAN", "LEE"),
            ("LEE", "J"),
            ("LI", "JORDAN"),
        ] {
            let view = View {
                family: f,
                given: g,
                birth_date: "2010-03-03",
                sex: "M",
                postal_code: "62701",
            };
            best = best.max(points(&msg, &view));
        }
        assert_eq!(best, BEST_WITH_SEX_DIFFERING);
        assert!(!other_sex_can_matter(MatchPolicy::default()));
        let lax = MatchPolicy {
            threshold: 8.0,
            ambiguity_margin: 1.0,
        };
        assert!(other_sex_can_matter(lax));
    }

    #[test]
    fn weak_matches_are_refused() {
        let roster = [d("Smith", "John", "1970-01-01", "M", "62701")];
        // Same name, other birth date: never a candidate.
        assert!(accept(&d("Smith", "John", "1970-01-02", "M", "62701"), &roster).is_err());
        // Same birth date and surname, other given name.
        assert!(accept(&d("Smith", "Robert", "1970-01-01", "M", "62701"), &roster).is_err());
        // Different sex.
        assert!(accept(&d("Smith", "John", "1970-01-01", "F", "62701"), &roster).is_err());
    }
}

debug_without_phi!(Demographics {});
