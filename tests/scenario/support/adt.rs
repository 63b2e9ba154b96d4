//! ADT messages for tests, built so a test reads as the event it describes:
//! `AdtMessage::new("A03").patient("MRN1").visit("V1").at("202611281400").text()`.
//! Defaults: EPIC at GENHOSP to ADTR at HIE, HL7 2.5.1, patient DOE^JANE born
//! 1970-01-01, female, inpatient on 4W, service MED.

/// One ADT message, field by field.
#[derive(Clone, Debug)]
pub struct AdtMessage {
    trigger: String,
    control_id: String,
    time: String,
    mrn: String,
    authority: String,
    family: String,
    given: String,
    birth_date: String,
    sex: String,
    pcp: Option<String>,
    attending: Option<String>,
    class: String,
    unit: String,
    visit: String,
    pv1_tail: String,
}

impl AdtMessage {
    /// An ADT^`trigger` (A01, A03, A04, ...); an A04 is an emergency visit in the ED.
    pub fn new(trigger: &str) -> AdtMessage {
        let ed = trigger == "A04";
        AdtMessage {
            trigger: trigger.to_string(),
            control_id: format!("C-{trigger}"),
            time: "202611280800".to_string(),
            mrn: "MRN1".to_string(),
            authority: "GENHOSP".to_string(),
            family: "DOE".to_string(),
            given: "JANE".to_string(),
            birth_date: "19700101".to_string(),
            sex: "F".to_string(),
            pcp: None,
            attending: None,
            class: if ed { "E" } else { "I" }.to_string(),
            unit: if ed { "ED" } else { "4W" }.to_string(),
            visit: "V1".to_string(),
            pv1_tail: String::new(),
        }
    }

    /// MSH-10.
    pub fn id(mut self, control_id: &str) -> Self {
        self.control_id = control_id.to_string();
        self
    }

    /// MSH-7 and EVN-2 (`YYYYMMDDHHMM[SS]`).
    pub fn at(mut self, time: &str) -> Self {
        self.time = time.to_string();
        self
    }

    /// PID-3, assigned by GENHOSP.
    pub fn patient(mut self, mrn: &str) -> Self {
        self.mrn = mrn.to_string();
        self
    }

    /// PID-7 (`YYYYMMDD`).
    pub fn born(mut self, date: &str) -> Self {
        self.birth_date = date.to_string();
        self
    }

    /// The patient's primary care provider (PD1-4, NPI-labelled), who also attends
    /// (PV1-7).
    pub fn pcp(mut self, npi: &str) -> Self {
        self.pcp = Some(npi.to_string());
        self.attending = Some(npi.to_string());
        self
    }

    /// PV1-2: E, I, O, ...
    pub fn class(mut self, class: &str) -> Self {
        self.class = class.to_string();
        self
    }

    /// PV1-3's point of care.
    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = unit.to_string();
        self
    }

    /// PV1-19.
    pub fn visit(mut self, visit: &str) -> Self {
        self.visit = visit.to_string();
        self
    }

    /// PV1 fields after PV1-19, as written (`|||...|01` for a discharge disposition).
    pub fn pv1_after_visit(mut self, tail: &str) -> Self {
        self.pv1_tail = tail.to_string();
        self
    }

    /// The message, segments ended by CR.
    pub fn text(&self) -> String {
        let provider = |npi: &Option<String>| {
            npi.as_deref()
                .map(|n| format!("{n}^WELBY^MARCUS^^^^^^NPI"))
                .unwrap_or_default()
        };
        let mut s = format!(
            "MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|{time}||ADT^{trigger}|{id}|P|2.5.1\r\
             EVN|{trigger}|{time}\r\
             PID|1||{mrn}^^^{authority}^MR||{family}^{given}||{dob}|{sex}\r",
            time = self.time,
            trigger = self.trigger,
            id = self.control_id,
            mrn = self.mrn,
            authority = self.authority,
            family = self.family,
            given = self.given,
            dob = self.birth_date,
            sex = self.sex,
        );
        if self.pcp.is_some() {
            s.push_str(&format!("PD1||||{}\r", provider(&self.pcp)));
        }
        s.push_str(&format!(
            "PV1|1|{class}|{unit}^1^A^GENHOSP||||{attending}|||MED|||||||||{visit}{tail}\r",
            class = self.class,
            unit = self.unit,
            attending = provider(&self.attending),
            visit = self.visit,
            tail = self.pv1_tail,
        ));
        s
    }
}
