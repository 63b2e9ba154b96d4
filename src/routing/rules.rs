//! Routing rules: declarative TOML files in `routing-rules/` (schema and examples in
//! `routing-rules/README.md`). A rule matches an encounter transition (and, for
//! recipient-level keys, one candidate recipient) and says what to do: notify a class
//! of recipients, suppress, or redact fields.
//!
//! Evaluation, per transition and candidate recipient:
//! 1. `notify` rules that match select the candidate if one of their `recipients`
//!    selectors names it; the first such rule (by `priority`, then file and position)
//!    decides channel order, content profile and timing.
//! 2. Any matching `suppress` rule stops the notification; the decision is recorded with
//!    its rule id and reason (a documented exception, not a silent drop).
//! 3. Every matching `redact` rule adds fields to leave out of the content.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A rule file's problem, with where it is.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Notify,
    Suppress,
    Redact,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ContentProfile {
    /// The CoP minimum: patient name, treating practitioner, sending institution.
    #[default]
    Minimum,
    Standard,
    Full,
}

impl ContentProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentProfile::Minimum => "minimum",
            ContentProfile::Standard => "standard",
            ContentProfile::Full => "full",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Timing {
    #[default]
    Immediate,
    /// Held and sent at the next digest hour (a recipient's stated preference).
    DailyDigest,
    /// Only discharges and transfers reach this recipient.
    DischargeOnly,
}

impl Timing {
    pub fn as_str(self) -> &'static str {
        match self {
            Timing::Immediate => "immediate",
            Timing::DailyDigest => "daily-digest",
            Timing::DischargeOnly => "discharge-only",
        }
    }
}

/// What a rule matches. Every key given must match; a list matches any of its values.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub facilities: Vec<String>,
    /// Transition kinds: ed-registration, admission, discharge, transfer, retraction,
    /// update, move, ed-timeout, ...
    #[serde(default)]
    pub events: Vec<String>,
    /// MSH-9.2 trigger events (A01, A03, ...).
    #[serde(default)]
    pub triggers: Vec<String>,
    /// PV1-2.
    #[serde(default)]
    pub patient_classes: Vec<String>,
    /// PV1-3.1 point of care (the unit).
    #[serde(default)]
    pub units: Vec<String>,
    /// PV1-10.
    #[serde(default)]
    pub services: Vec<String>,
    /// DG1-3 codes starting with any of these (`F10` matches `F10.20`).
    #[serde(default)]
    pub diagnosis_prefixes: Vec<String>,
    pub min_age: Option<u32>,
    pub max_age: Option<u32>,
    /// MSH-3.
    #[serde(default)]
    pub sending_applications: Vec<String>,
    /// The candidate recipient's attribution relationship (pcp, care_manager, ...).
    #[serde(default)]
    pub relationships: Vec<String>,
    /// The patient is on the opt-out list (`routing-rules/opt-outs.csv`).
    pub opted_out: Option<bool>,
    /// PD1-12 protection indicator.
    pub protected: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub action: Action,
    /// Lower runs first; ties keep file order.
    #[serde(default = "default_priority")]
    pub priority: i64,
    #[serde(default, rename = "match")]
    pub when: Match,
    /// notify: who. `pcp`, `care_manager`, `post_acute`, `specialist`, `other` (by
    /// attribution relationship), `message` (named in PD1/ROL), `roster:NAME` (a roster
    /// source), `subscribers` (FHIR subscribers), or `any`.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// notify: channel preference order (DIRECT, FHIR, REST).
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub content: ContentProfile,
    #[serde(default)]
    pub timing: Timing,
    /// redact: fields to leave out (diagnosis, admit_reason, discharge_disposition,
    /// discharged_to, location, patient_address, patient_phone, birth_date).
    #[serde(default)]
    pub fields: Vec<String>,
    /// suppress: why, in words an auditor reads.
    #[serde(default)]
    pub reason: String,
    /// Where it was defined (file:line), filled in at load.
    #[serde(skip_deserializing, default)]
    pub defined_at: String,
}

fn default_priority() -> i64 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

pub const EVENT_KINDS: &[&str] = &[
    "ed-registration",
    "admission",
    "discharge",
    "transfer",
    "retraction",
    "update",
    "move",
    "ed-timeout",
    "registration",
    "pre-admit",
    "class-change",
    "leave",
    "return",
    "patient-update",
    "merge",
    "unknown",
];
const RELATIONSHIPS: &[&str] = &["pcp", "care_manager", "post_acute", "specialist", "other"];
const REDACTABLE: &[&str] = &[
    "diagnosis",
    "admit_reason",
    "discharge_disposition",
    "discharged_to",
    "location",
    "patient_address",
    "patient_phone",
    "birth_date",
];

/// A patient on the opt-out list: identifier and assigning authority.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OptOut {
    pub patient_id: String,
    pub authority: String,
}

/// A loaded, checked rule set.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub opt_outs: BTreeSet<OptOut>,
    pub files: Vec<PathBuf>,
}

/// Everything a rule can look at.
pub struct Facts<'a> {
    pub facility: &'a str,
    pub event: &'a str,
    pub trigger: &'a str,
    pub patient_class: &'a str,
    pub unit: &'a str,
    pub service: &'a str,
    pub diagnoses: &'a [String],
    pub age: Option<u32>,
    pub sending_application: &'a str,
    pub opted_out: bool,
    pub protected: bool,
}

/// A candidate recipient as rules see it.
pub struct Candidate<'a> {
    pub relationships: &'a [String],
    /// Roster sources it came from.
    pub roster_sources: &'a [String],
    pub from_message: bool,
}

/// What the rules decided for one (transition, candidate).
#[derive(Clone, Debug, Serialize, Default)]
pub struct Verdict {
    /// The notify rule that selected the candidate.
    pub selected_by: Option<String>,
    pub suppressed_by: Option<(String, String)>,
    pub redact: BTreeSet<String>,
    pub redacted_by: Vec<String>,
    pub channels: Vec<String>,
    pub content: ContentProfile,
    pub timing: Timing,
}

impl Verdict {
    /// Every rule id involved, for the outbox and the decision record.
    pub fn rule_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.selected_by.iter().cloned().collect();
        ids.extend(self.suppressed_by.iter().map(|(id, _)| id.clone()));
        ids.extend(self.redacted_by.iter().cloned());
        ids
    }
}

fn any_eq(list: &[String], v: &str) -> bool {
    list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(v))
}

impl Match {
    /// The message-level keys.
    fn matches(&self, f: &Facts<'_>) -> bool {
        any_eq(&self.facilities, f.facility)
            && any_eq(&self.events, f.event)
            && any_eq(&self.triggers, f.trigger)
            && any_eq(&self.patient_classes, f.patient_class)
            && any_eq(&self.units, f.unit)
            && any_eq(&self.services, f.service)
            && any_eq(&self.sending_applications, f.sending_application)
            && (self.diagnosis_prefixes.is_empty()
                || f.diagnoses.iter().any(|d| {
                    self.diagnosis_prefixes
                        .iter()
                        .any(|p| d.to_ascii_uppercase().starts_with(&p.to_ascii_uppercase()))
                }))
            && self.min_age.is_none_or(|m| f.age.is_some_and(|a| a >= m))
            && self.max_age.is_none_or(|m| f.age.is_some_and(|a| a <= m))
            && self.opted_out.is_none_or(|o| o == f.opted_out)
            && self.protected.is_none_or(|p| p == f.protected)
    }

    fn matches_candidate(&self, c: &Candidate<'_>) -> bool {
        self.relationships.is_empty()
            || c.relationships
                .iter()
                .any(|r| any_eq(&self.relationships, r))
    }
}

impl Rule {
    fn selects(&self, c: &Candidate<'_>) -> bool {
        self.recipients.iter().any(|sel| match sel.as_str() {
            "any" => true,
            "message" => c.from_message,
            s if s.starts_with("roster:") => c
                .roster_sources
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&s["roster:".len()..])),
            s => c.relationships.iter().any(|r| r.eq_ignore_ascii_case(s)),
        })
    }
}

impl RuleSet {
    /// Whether the patient is on the opt-out list, by any of their identifiers.
    pub fn opted_out<'a>(&self, ids: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        ids.into_iter().any(|(id, authority)| {
            self.opt_outs.contains(&OptOut {
                patient_id: id.to_string(),
                authority: authority.to_string(),
            })
        })
    }

    /// The rules that fire on the transition itself (any candidate), for `explain`.
    pub fn fired(&self, f: &Facts<'_>) -> Vec<&Rule> {
        self.rules.iter().filter(|r| r.when.matches(f)).collect()
    }

    pub fn evaluate(&self, f: &Facts<'_>, c: &Candidate<'_>) -> Verdict {
        let mut v = Verdict::default();
        for rule in &self.rules {
            if !rule.when.matches(f) || !rule.when.matches_candidate(c) {
                continue;
            }
            match rule.action {
                Action::Notify => {
                    if v.selected_by.is_none() && rule.selects(c) {
                        v.selected_by = Some(rule.id.clone());
                        v.channels = rule.channels.clone();
                        v.content = rule.content;
                        v.timing = rule.timing;
                    }
                }
                Action::Suppress => {
                    if v.suppressed_by.is_none() {
                        let reason = if rule.reason.is_empty() {
                            rule.description.clone()
                        } else {
                            rule.reason.clone()
                        };
                        v.suppressed_by = Some((rule.id.clone(), reason));
                    }
                }
                Action::Redact => {
                    v.redact.extend(rule.fields.iter().cloned());
                    v.redacted_by.push(rule.id.clone());
                }
            }
        }
        v
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses one rule file. `text` is the file's content; `file` names it in errors.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let err = |line: usize, message: String| RuleError {
        file: file.to_string(),
        line,
        message,
    };
    let parsed: RuleFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        err(line, e.message().trim().to_string())
    })?;
    // Where each [[rule]] starts, to point at the rule a semantic error is in.
    let starts: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[rule]]"))
        .map(|(i, _)| i + 1)
        .collect();
    let mut rules = parsed.rule;
    for (i, rule) in rules.iter_mut().enumerate() {
        let line = starts.get(i).copied().unwrap_or(1);
        rule.defined_at = format!("{file}:{line}");
        check_rule(rule).map_err(|m| err(line, format!("rule '{}': {m}", rule.id)))?;
    }
    Ok(rules)
}

fn check_rule(r: &Rule) -> Result<(), String> {
    if r.id.trim().is_empty()
        || !r
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("id must be non-empty letters, digits, '-', '_' or '.'".into());
    }
    for e in &r.when.events {
        if !EVENT_KINDS.contains(&e.as_str()) {
            return Err(format!(
                "unknown event '{e}' (one of {})",
                EVENT_KINDS.join(", ")
            ));
        }
    }
    for rel in &r.when.relationships {
        if !RELATIONSHIPS.contains(&rel.as_str()) {
            return Err(format!(
                "unknown relationship '{rel}' (one of {})",
                RELATIONSHIPS.join(", ")
            ));
        }
    }
    if let (Some(lo), Some(hi)) = (r.when.min_age, r.when.max_age) {
        if lo > hi {
            return Err(format!("min_age {lo} is above max_age {hi}"));
        }
    }
    match r.action {
        Action::Notify => {
            if r.recipients.is_empty() {
                return Err("a notify rule needs recipients".into());
            }
            for s in &r.recipients {
                let ok = matches!(s.as_str(), "any" | "message" | "subscribers")
                    || RELATIONSHIPS.contains(&s.as_str())
                    || s.strip_prefix("roster:").is_some_and(|n| !n.is_empty());
                if !ok {
                    return Err(format!(
                        "unknown recipient '{s}' (pcp, care_manager, post_acute, specialist, other, message, roster:NAME, subscribers, any)"
                    ));
                }
            }
            for c in &r.channels {
                if !matches!(c.as_str(), "DIRECT" | "FHIR" | "REST") {
                    return Err(format!("unknown channel '{c}' (DIRECT, FHIR, REST)"));
                }
            }
        }
        Action::Suppress => {
            if r.reason.trim().is_empty() && r.description.trim().is_empty() {
                return Err("a suppress rule needs a reason (it is recorded as evidence)".into());
            }
        }
        Action::Redact => {
            if r.fields.is_empty() {
                return Err("a redact rule needs fields".into());
            }
            for f in &r.fields {
                if !REDACTABLE.contains(&f.as_str()) {
                    return Err(format!(
                        "unknown field '{f}' (one of {})",
                        REDACTABLE.join(", ")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Parses the opt-out list: a CSV with `patient_id,assigning_authority` columns.
pub fn parse_opt_outs(file: &str, text: &str) -> Result<BTreeSet<OptOut>, RuleError> {
    let err = |line: usize, message: String| RuleError {
        file: file.to_string(),
        line,
        message,
    };
    let mut out = BTreeSet::new();
    let mut lines = text.lines().enumerate();
    let header = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.to_ascii_lowercase()));
    let Some((hline, header)) = header else {
        return Ok(out);
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let (Some(pi), Some(ai)) = (
        cols.iter().position(|c| *c == "patient_id"),
        cols.iter().position(|c| *c == "assigning_authority"),
    ) else {
        return Err(err(
            hline + 1,
            "the header must name patient_id and assigning_authority".into(),
        ));
    };
    for (i, l) in lines {
        if l.trim().is_empty() || l.starts_with('#') {
            continue;
        }
        let v: Vec<&str> = l.split(',').map(str::trim).collect();
        let id = v.get(pi).copied().unwrap_or("");
        if id.is_empty() {
            return Err(err(i + 1, "patient_id is empty".into()));
        }
        out.insert(OptOut {
            patient_id: id.to_string(),
            authority: v.get(ai).copied().unwrap_or("").to_string(),
        });
    }
    Ok(out)
}

/// Loads every `*.toml` in `dir` (sorted by name) and `opt-outs.csv` if present. Rule
/// ids must be unique across files. An error names the file and line.
pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleError> {
    let at = |p: &Path, line: usize, message: String| RuleError {
        file: p.display().to_string(),
        line,
        message,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| at(dir, 0, format!("cannot read the rules directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut set = RuleSet::default();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| at(f, 0, format!("cannot read: {e}")))?;
        let rules = parse_file(&f.display().to_string(), &text)?;
        for r in rules {
            if let Some(prev) = set.rules.iter().find(|p| p.id == r.id) {
                let line = r
                    .defined_at
                    .rsplit(':')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(1);
                return Err(at(
                    f,
                    line,
                    format!(
                        "rule id '{}' is already defined at {}",
                        r.id, prev.defined_at
                    ),
                ));
            }
            set.rules.push(r);
        }
    }
    let opt = dir.join("opt-outs.csv");
    if opt.exists() {
        let text =
            std::fs::read_to_string(&opt).map_err(|e| at(&opt, 0, format!("cannot read: {e}")))?;
        set.opt_outs = parse_opt_outs(&opt.display().to_string(), &text)?;
        files.push(opt);
    }
    // Stable: equal priorities keep file and position order.
    set.rules.sort_by_key(|r| r.priority);
    set.files = files;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(event: &'a str, unit: &'a str, diags: &'a [String]) -> Facts<'a> {
        Facts {
            facility: "GENHOSP",
            event,
            trigger: "A01",
            patient_class: "I",
            unit,
            service: "MED",
            diagnoses: diags,
            age: Some(40),
            sending_application: "EPIC",
            opted_out: false,
            protected: false,
        }
    }

    const RULES: &str = r#"
[[rule]]
id = "cop"
action = "notify"
match.events = ["admission", "discharge"]
recipients = ["pcp", "roster:acme"]
channels = ["DIRECT", "REST"]

[[rule]]
id = "part2"
action = "suppress"
match.units = ["SUD1"]
reason = "42 CFR Part 2 program"

[[rule]]
id = "no-dx"
action = "redact"
match.diagnosis_prefixes = ["F1"]
fields = ["diagnosis"]
"#;

    #[test]
    fn notify_suppress_redact() {
        let rules = parse_file("t.toml", RULES).unwrap();
        let set = RuleSet {
            rules,
            ..RuleSet::default()
        };
        let pcp = vec!["pcp".to_string()];
        let none: Vec<String> = vec![];
        let c = Candidate {
            relationships: &pcp,
            roster_sources: &none,
            from_message: true,
        };
        let v = set.evaluate(&facts("admission", "4W", &[]), &c);
        assert_eq!(v.selected_by.as_deref(), Some("cop"));
        assert!(v.suppressed_by.is_none());
        assert_eq!(v.channels, ["DIRECT", "REST"]);
        let v = set.evaluate(&facts("move", "4W", &[]), &c);
        assert!(v.selected_by.is_none());
        let v = set.evaluate(&facts("admission", "SUD1", &[]), &c);
        assert_eq!(v.suppressed_by.unwrap().0, "part2");
        let dx = vec!["F10.20".to_string()];
        let v = set.evaluate(&facts("admission", "4W", &dx), &c);
        assert!(v.redact.contains("diagnosis"));
        assert_eq!(v.rule_ids(), ["cop", "no-dx"]);
        let cm = vec!["care_manager".to_string()];
        let acme = vec!["ACME".to_string()];
        let c = Candidate {
            relationships: &cm,
            roster_sources: &acme,
            from_message: false,
        };
        assert_eq!(
            set.evaluate(&facts("discharge", "4W", &[]), &c)
                .selected_by
                .as_deref(),
            Some("cop")
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse_file("r.toml", "[[rule]]\nid = \"x\"\naction = \"notify\"\nrecipients = [\"pcp\"]\nmatch.events = [\"admision\"]\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("r.toml", 1));
        assert!(e.message.contains("unknown event 'admision'"), "{e}");
        let e = parse_file("r.toml", "[[rule]]\nid = \"x\"\naction = \"shout\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse_file(
            "r.toml",
            "[[rule]]\nid = \"x\"\naction = \"notify\"\nrecipents = [\"pcp\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("recipents"), "{e}");
        let e = parse_file("r.toml", "[[rule]\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn opt_out_list() {
        let s = parse_opt_outs(
            "o.csv",
            "# who\npatient_id,assigning_authority\nMRN1,GENHOSP\n",
        )
        .unwrap();
        let set = RuleSet {
            opt_outs: s,
            ..RuleSet::default()
        };
        assert!(set.opted_out([("MRN1", "GENHOSP")]));
        assert!(!set.opted_out([("MRN1", "OTHER")]));
        assert!(parse_opt_outs("o.csv", "id,x\n1,2\n").is_err());
    }
}
