//! Newtypes that carry meaning through the pipeline.

use std::fmt;

/// MSH-10: unique per sender, echoed in MSA-2, part of the duplicate key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ControlId(String);

impl ControlId {
    /// Returns `None` for an empty or all-blank control id.
    pub fn new(value: &str) -> Option<Self> {
        let v = value.trim();
        (!v.is_empty()).then(|| ControlId(v.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ControlId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ControlId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ControlId({})", self.0)
    }
}

/// MSH-9: message code, trigger event and (optional) structure, e.g. `ADT^A01^ADT_A01`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageType {
    pub code: String,
    pub trigger: String,
    pub structure: String,
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}^{}", self.code, self.trigger)
    }
}

/// Table 0155 values for MSH-15/MSH-16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCondition {
    Always,
    Never,
    ErrorOnly,
    SuccessOnly,
}

impl AckCondition {
    /// Unknown or empty values mean "always": answering is the safer mistake.
    pub fn parse(v: &str) -> Self {
        match v.trim() {
            "NE" => AckCondition::Never,
            "ER" => AckCondition::ErrorOnly,
            "SU" => AckCondition::SuccessOnly,
            _ => AckCondition::Always,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            AckCondition::Always => "AL",
            AckCondition::Never => "NE",
            AckCondition::ErrorOnly => "ER",
            AckCondition::SuccessOnly => "SU",
        }
    }
}

/// Original mode when MSH-15 and MSH-16 are both empty; enhanced otherwise (standards §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    Original,
    Enhanced {
        accept: AckCondition,
        application: AckCondition,
    },
}

impl AckMode {
    pub fn from_msh(msh15: &str, msh16: &str) -> Self {
        if msh15.trim().is_empty() && msh16.trim().is_empty() {
            AckMode::Original
        } else {
            AckMode::Enhanced {
                accept: AckCondition::parse(msh15),
                application: AckCondition::parse(msh16),
            }
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AckMode::Original => "original",
            AckMode::Enhanced { .. } => "enhanced",
        }
    }
}
