//! Reads a decoded HL7 v2 message: the header, the fields ingest needs, and
//! what is wrong with it.
//!
//! Two outcomes that must not be confused (standards §2.4, §2.6):
//! - [`Rejection`]: the message cannot be accepted at all (not HL7, no control id, wrong
//!   message type, version or processing id). It gets AR/CR and goes to quarantine.
//! - [`ParsedMessage::problems`]: the message is HL7 we can store, but its content is
//!   incomplete (a required field is empty, a segment cannot be read). It is stored and
//!   gets AE (original mode) or CA with a warning (enhanced mode).
//!
//! We parse by segment id and position, not by a rigid grammar: real feeds vary too much.

use super::ack::{ErrDetail, ErrLocation};
use super::adt::Identifier;
use super::escape::unescape;
use super::read::FieldReader;
use super::types::{AckMode, ControlId, MessageType};
use hl7_parser::message::{Field, Separators};
use std::borrow::Cow;

/// What the operator configures about acceptable messages.
#[derive(Clone, Debug)]
pub struct ParseRules {
    /// Accepted MSH-9.1 message codes; empty accepts any.
    pub message_codes: Vec<String>,
    /// Accepted MSH-11.1 processing ids; empty accepts any. An empty MSH-11 is accepted.
    pub processing_ids: Vec<String>,
    /// Fields (`PID-3`) or segments (`PV1`) whose absence is a content error (AE).
    pub required: Vec<FieldSpec>,
}

impl Default for ParseRules {
    fn default() -> Self {
        ParseRules {
            message_codes: vec!["ADT".into()],
            processing_ids: vec![],
            required: vec![FieldSpec::parse("PID-3").expect("valid spec")],
        }
    }
}

/// `SEG` or `SEG-N`: a segment that must be present, or a field that must be valued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub segment: String,
    pub field: Option<usize>,
}

/// Why a `hl7.required_fields` entry is not `SEG` or `SEG-N`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldSpecError {
    #[error("bad field number in '{0}'")]
    FieldNumber(String),
    #[error("'{0}' is not SEG or SEG-N")]
    Segment(String),
    #[error("'{0}': fields are numbered from 1")]
    FieldZero(String),
}

impl FieldSpec {
    pub fn parse(spec: &str) -> Result<Self, FieldSpecError> {
        let (seg, field) = match spec.split_once('-') {
            Some((s, f)) => (
                s,
                Some(
                    f.parse::<usize>()
                        .map_err(|_| FieldSpecError::FieldNumber(spec.to_string()))?,
                ),
            ),
            None => (spec, None),
        };
        if seg.len() != 3 || !seg.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(FieldSpecError::Segment(spec.to_string()));
        }
        if field == Some(0) {
            return Err(FieldSpecError::FieldZero(spec.to_string()));
        }
        Ok(FieldSpec {
            segment: seg.to_ascii_uppercase(),
            field,
        })
    }
}

/// The message header, with escapes decoded.
#[derive(Clone, Debug)]
pub struct Header {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub message_time: String,
    pub message_type: MessageType,
    pub control_id: ControlId,
    pub processing_id: String,
    pub version: String,
    pub ack_mode: AckMode,
    pub charset_field: String,
}

/// What ingest reads beyond MSH (routing reads the full typed ADT event).
#[derive(Clone, Debug, Default)]
pub struct RoutingFields {
    /// EVN-2, recorded date/time.
    pub event_time: Option<String>,
    /// PID-3 repetitions in order; the first is the primary identifier.
    pub patient_ids: Vec<Identifier>,
    /// PV1-2.
    pub patient_class: Option<String>,
    /// PV1-19.1.
    pub visit_number: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ParsedMessage {
    pub header: Header,
    pub routing: RoutingFields,
    /// Content problems; empty for a clean message.
    pub problems: Vec<ErrDetail>,
    /// How many segments were read.
    pub segment_count: usize,
}

/// Why a message cannot be accepted. `reason` is a short, PHI-free label for metrics
/// and the quarantine table; `err` goes into the ACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub err: ErrDetail,
}

impl Rejection {
    fn new(reason: &'static str, code: u16, location: Option<ErrLocation>, text: String) -> Self {
        Rejection {
            reason,
            err: ErrDetail::error(code, location, text),
        }
    }
}

/// Parses decoded text. Never panics on input; every failure is a [`Rejection`].
///
/// Only MSH and the segments routing needs now (EVN, PID, PV1, and any named in
/// `rules.required`) go through the full parser; the others are checked for a valid
/// segment header and kept as they are. The ACK must not wait for a full parse: the
/// router parses the whole message after it is durable.
pub fn parse_message(text: &str, rules: &ParseRules) -> Result<ParsedMessage, Rejection> {
    let normalized = normalize(text).ok_or_else(not_hl7)?;
    let segments: Vec<&str> = normalized.text.split('\r').collect();
    let (seps, msh, header) = head(&segments, rules)?;
    let fs = seps.field;
    let find = |name: &str| find_segment(&segments, name, seps);
    let evn = find("EVN");
    let pid = find("PID");
    let pv1 = find("PV1");

    let routing = read_routing_fields(evn.as_ref(), pid.as_ref(), pv1.as_ref(), &seps);

    let mut problems = Vec::new();
    for (i, seg) in segments.iter().enumerate().skip(1) {
        let b = seg.as_bytes();
        let valid = b.len() >= 4
            && b[..3].iter().all(|c| c.is_ascii_alphanumeric())
            && seg[3..].starts_with(fs);
        if !valid {
            let shown: String = seg
                .chars()
                .take(3)
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            problems.push(ErrDetail::error(
                100,
                Some(ErrLocation::segment(&shown, i + 1)),
                format!(
                    "Segment {} ('{shown}...') is not a valid segment (a segment id is 3 letters or digits followed by the field separator); it was not read",
                    i + 1
                ),
            ));
        }
    }
    for spec in &rules.required {
        let segment = (spec.segment != "MSH").then(|| find(&spec.segment));
        if matches!(segment, Some(None)) {
            problems.push(ErrDetail::error(
                100,
                Some(ErrLocation::segment(&spec.segment, 1)),
                format!("Required segment {} is missing", spec.segment),
            ));
            continue;
        }
        if let Some(f) = spec.field {
            let valued = match segment {
                None => msh.valued(f),
                Some(seg) => seg.and_then(|s| s.field(f)).is_some_and(|v| !v.is_empty()),
            };
            if !valued {
                problems.push(ErrDetail::error(
                    101,
                    Some(ErrLocation::field(&spec.segment, 1, f)),
                    format!("Required field {}-{} is empty", spec.segment, f),
                ));
            }
        }
    }

    Ok(ParsedMessage {
        header,
        routing,
        problems,
        segment_count: segments.len(),
    })
}

pub(crate) fn not_hl7() -> Rejection {
    Rejection::new(
        "not_hl7",
        100,
        Some(ErrLocation::segment("MSH", 1)),
        "Message does not start with an MSH segment with field separator and encoding characters"
            .into(),
    )
}

/// Where every parse starts, from the normalised text's segments: the separators, the
/// MSH, and the header checked against `rules`. The router's full parse
/// ([`super::adt::AdtEvent::parse`]) needs only this of [`parse_message`].
pub(crate) fn head<'a>(
    segments: &[&'a str],
    rules: &ParseRules,
) -> Result<(Separators, RawMsh<'a>, Header), Rejection> {
    let msh = RawMsh::new(segments[0]).ok_or_else(|| {
        Rejection::new(
            "bad_msh",
            102,
            Some(ErrLocation::field("MSH", 1, 2)),
            "MSH segment could not be parsed".into(),
        )
    })?;
    let seps = msh.rest.seps;
    let evn = find_segment(segments, "EVN", seps);
    let header = read_header(&msh, evn.as_ref(), &seps, rules)?;
    Ok((seps, msh, header))
}

/// The MSH segment, read as hl7-parser's `parse_msh` reads it (`MSH`, five ASCII
/// separator characters, then the fields from MSH-3), but with each field parsed only
/// when asked for: parsing them all cost as much as the rest of the router's parse.
pub(crate) struct RawMsh<'a> {
    /// MSH-3 onwards, as a segment whose field 0 is MSH-3.
    rest: RawSegment<'a>,
}

impl<'a> RawMsh<'a> {
    fn new(line: &'a str) -> Option<RawMsh<'a>> {
        let rest = line.strip_prefix("MSH")?;
        let enc = rest.get(..5).filter(|e| e.is_ascii())?;
        let mut c = enc.chars();
        let seps = Separators {
            field: c.next()?,
            component: c.next()?,
            repetition: c.next()?,
            escape: c.next()?,
            subcomponent: c.next()?,
            lenient_newlines: false,
        };
        let rest = &rest[5..];
        let text = rest.strip_prefix(seps.field).unwrap_or(rest);
        Some(RawMsh {
            rest: RawSegment { text, seps },
        })
    }

    /// Field `n` (1-based; MSH-1 and MSH-2 are the separators and are not asked for).
    fn field(&self, n: usize) -> Option<Field<'a>> {
        self.rest.field(n.checked_sub(3)?)
    }

    /// Whether field `n` has a value (MSH-1 and MSH-2 always do).
    fn valued(&self, n: usize) -> bool {
        n <= 2 || self.field(n).is_some_and(|v| !v.is_empty())
    }
}

/// The first segment named `name` (after the MSH), unparsed.
fn find_segment<'a>(segments: &[&'a str], name: &str, seps: Separators) -> Option<RawSegment<'a>> {
    let fs = seps.field;
    segments[1..]
        .iter()
        .find(|s| {
            s.as_bytes().get(..3) == Some(name.as_bytes())
                && s.get(3..).is_some_and(|r| r.starts_with(fs))
        })
        .map(|s| RawSegment { text: s, seps })
}

/// A segment we have found but not parsed: fields are parsed (by hl7-parser) one at a
/// time, when asked for. Parsing a whole PID or PV1 costs dozens of allocations per
/// message for fields the ingest path never reads.
struct RawSegment<'a> {
    text: &'a str,
    seps: Separators,
}

impl<'a> RawSegment<'a> {
    /// Field `n` (1-based after the segment id; 0 is the id), `None` when absent or
    /// unparseable.
    fn field(&self, n: usize) -> Option<Field<'a>> {
        let raw = self.text.split(self.seps.field).nth(n)?;
        hl7_parser::parser::parse_field_with_separators(raw, self.seps).ok()
    }
}

pub(crate) struct Normalized<'a> {
    pub(crate) text: Cow<'a, str>,
}

/// Makes the text acceptable to hl7-parser without changing any field:
/// - segments may end in CR, LF or CRLF, and blank segments are dropped;
/// - a fifth encoding character (the v2.7 truncation character) is removed from MSH-2,
///   since the parser expects exactly four and would otherwise shift every MSH field;
/// - a bare segment id with no fields gets its field separator.
///
/// Returns `None` when the text does not start with `MSH` and a field separator.
pub(crate) fn normalize(text: &str) -> Option<Normalized<'_>> {
    let text = text.trim_start_matches(['\r', '\n', ' ', '\t', '\u{feff}']);
    let b = text.as_bytes();
    if b.len() < 8 || !text.starts_with("MSH") {
        return None;
    }
    let fs = b[3] as char;
    if !fs.is_ascii() || fs.is_ascii_alphanumeric() || fs.is_ascii_whitespace() {
        return None;
    }
    // Encoding characters: 4 or 5 ASCII characters up to the next field separator,
    // within the MSH segment itself.
    let msh_line = text.split(['\r', '\n']).next().unwrap_or(text);
    let enc_end = msh_line[4..]
        .find(fs)
        .map(|i| 4 + i)
        .unwrap_or(msh_line.len());
    let enc = &msh_line[4..enc_end];
    if enc.len() < 4 || enc.len() > 5 || !enc.is_ascii() {
        return None;
    }
    let clean = enc.len() == 4
        && !text.contains('\n')
        && !text.contains("\r\r")
        && !text.split('\r').any(|s| s.len() == 3);
    if clean {
        return Some(Normalized {
            text: Cow::Borrowed(text.trim_end_matches('\r')),
        });
    }
    let mut out = String::with_capacity(text.len());
    for (i, seg) in text.split(['\r', '\n']).enumerate() {
        if seg.trim().is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\r');
        }
        if i == 0 && enc.len() == 5 {
            out.push_str(&seg[..8]);
            out.push_str(&seg[9..]);
        } else {
            out.push_str(seg);
            if seg.len() == 3 {
                out.push(fs);
            }
        }
    }
    Some(Normalized {
        text: Cow::Owned(out),
    })
}

fn decoded(field: Option<&Field<'_>>, seps: &Separators) -> String {
    field
        .map(|f| unescape(f.raw_value(), seps).into_owned())
        .unwrap_or_default()
}

fn component(field: Option<&Field<'_>>, n: usize, seps: &Separators) -> String {
    field
        .and_then(|f| f.repeat(1))
        .and_then(|r| r.component(n))
        .map(|c| unescape(c.raw_value(), seps).into_owned())
        .unwrap_or_default()
}

fn read_header(
    msh: &RawMsh<'_>,
    evn: Option<&RawSegment<'_>>,
    seps: &Separators,
    rules: &ParseRules,
) -> Result<Header, Rejection> {
    let f = |n: usize| msh.field(n);
    let msh9 = f(9);
    let msh9 = msh9.as_ref();
    let code = component(msh9, 1, seps).trim().to_string();
    if code.is_empty() {
        return Err(Rejection::new(
            "missing_message_type",
            101,
            Some(ErrLocation::field("MSH", 1, 9)),
            "Required field MSH-9 (message type) is empty".into(),
        ));
    }
    let control_id = ControlId::new(&decoded(f(10).as_ref(), seps)).ok_or_else(|| {
        Rejection::new(
            "missing_control_id",
            101,
            Some(ErrLocation::field("MSH", 1, 10)),
            "Required field MSH-10 (message control id) is empty".into(),
        )
    })?;
    if !rules.message_codes.is_empty() && !rules.message_codes.iter().any(|c| c == &code) {
        return Err(Rejection::new(
            "unsupported_message_type",
            200,
            Some(ErrLocation::component("MSH", 1, 9, 1)),
            format!(
                "Message type {code} is not accepted here (accepted: {})",
                rules.message_codes.join(", ")
            ),
        ));
    }
    let mut trigger = component(msh9, 2, seps).trim().to_string();
    if trigger.is_empty() {
        // HL7 2.1/2.2 and some 2.3 senders put the trigger only in EVN-1.
        trigger = decoded(evn.and_then(|s| s.field(1)).as_ref(), seps)
            .trim()
            .to_string();
    }
    if trigger.is_empty() {
        return Err(Rejection::new(
            "missing_trigger_event",
            101,
            Some(ErrLocation::component("MSH", 1, 9, 2)),
            "Required component MSH-9.2 (trigger event) is empty and there is no EVN-1".into(),
        ));
    }
    let version = component(f(12).as_ref(), 1, seps).trim().to_string();
    if !version.starts_with("2.") {
        return Err(Rejection::new(
            "unsupported_version",
            203,
            Some(ErrLocation::field("MSH", 1, 12)),
            format!("HL7 version '{version}' (MSH-12) is not supported; versions 2.1 to 2.9 are"),
        ));
    }
    let processing_id = component(f(11).as_ref(), 1, seps).trim().to_string();
    if !processing_id.is_empty()
        && !rules.processing_ids.is_empty()
        && !rules.processing_ids.iter().any(|p| p == &processing_id)
    {
        return Err(Rejection::new(
            "unsupported_processing_id",
            202,
            Some(ErrLocation::field("MSH", 1, 11)),
            format!(
                "Processing id '{processing_id}' (MSH-11) is not accepted by this listener (accepted: {})",
                rules.processing_ids.join(", ")
            ),
        ));
    }
    Ok(Header {
        sending_application: decoded(f(3).as_ref(), seps),
        sending_facility: decoded(f(4).as_ref(), seps),
        receiving_application: decoded(f(5).as_ref(), seps),
        receiving_facility: decoded(f(6).as_ref(), seps),
        message_time: decoded(f(7).as_ref(), seps),
        message_type: MessageType {
            code,
            trigger,
            structure: component(msh9, 3, seps).trim().to_string(),
        },
        control_id,
        processing_id,
        version,
        ack_mode: AckMode::from_msh(
            &decoded(f(15).as_ref(), seps),
            &decoded(f(16).as_ref(), seps),
        ),
        charset_field: f(18)
            .as_ref()
            .and_then(|x| x.repeat(1))
            .map(|r| r.raw_value().trim().to_string())
            .unwrap_or_default(),
    })
}

fn read_routing_fields(
    evn: Option<&RawSegment<'_>>,
    pid: Option<&RawSegment<'_>>,
    pv1: Option<&RawSegment<'_>>,
    seps: &Separators,
) -> RoutingFields {
    let mut out = RoutingFields::default();
    let r = FieldReader { seps: *seps };
    fn raw<'m>(segment: Option<&RawSegment<'m>>, n: usize) -> &'m str {
        segment
            .and_then(|s| s.field(n))
            .map(|f| f.raw_value())
            .unwrap_or("")
    }
    let filled = |v: String| Some(v).filter(|v| !v.is_empty());
    out.event_time = filled(r.component(raw(evn, 2), 1));
    out.patient_ids = r.identifiers(raw(pid, 3));
    out.patient_class = filled(r.component(raw(pv1, 2), 1).to_ascii_uppercase());
    out.visit_number = filled(r.component(raw(pv1, 19), 1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A01: &str = "MSH|^~\\&|EPIC|GENHOSP|RTR|HIE|20261128093000||ADT^A01^ADT_A01|CTRL1|P|2.5.1|||AL|NE\rEVN|A01|20261128093000\rPID|1||MRN1^^^GENHOSP^MR~999^^^SSA^SS||DOE^JOHN\rPV1|1|I|4W^401||||||||||||||||V123\r";

    #[test]
    fn reads_header_and_routing_fields() {
        let m = parse_message(A01, &ParseRules::default()).unwrap();
        assert_eq!(m.header.sending_application, "EPIC");
        assert_eq!(m.header.sending_facility, "GENHOSP");
        assert_eq!(m.header.control_id.as_str(), "CTRL1");
        assert_eq!(m.header.message_type.to_string(), "ADT^A01");
        assert_eq!(m.header.message_type.structure, "ADT_A01");
        assert_eq!(m.header.version, "2.5.1");
        assert!(matches!(m.header.ack_mode, AckMode::Enhanced { .. }));
        assert_eq!(m.routing.patient_ids.len(), 2);
        assert_eq!(m.routing.patient_ids[0].key(), "MRN1^GENHOSP");
        assert_eq!(m.routing.patient_class.as_deref(), Some("I"));
        assert_eq!(m.routing.visit_number.as_deref(), Some("V123"));
        assert!(m.problems.is_empty());
        assert_eq!(m.segment_count, 4);
    }

    /// Ingest and routing read the same fields through one reader: the patient key
    /// ingest stores (and keys Kafka records by) is the one routing keys encounters by,
    /// even for an identifier with spaces, escapes and an assigning authority given as
    /// namespace&universal id, and a lower-case patient class.
    #[test]
    fn ingest_and_routing_read_the_same_fields_the_same_way() {
        let t = "MSH|^~\\&|EPIC|GENHOSP|ADTR|HIE|20261101080000||ADT^A01|C1|P|2.5.1\r\
                 EVN|A01|20261101080000\r\
                 PID|1|| MRN\\T\\1 ^^^GENHOSP&1.2.3&ISO^MR~X9^^^OTHER^MR||DOE^JANE\r\
                 PV1|1|i|4W|||||||||||||||| V1 \r";
        let m = parse_message(t, &ParseRules::default()).unwrap();
        let ev = crate::hl7::adt::AdtEvent::parse(t).unwrap();
        let key = ev.patient_key().unwrap();
        assert_eq!(key, "MRN&1^GENHOSP");
        assert_eq!(m.routing.patient_ids[0].key(), key);
        assert_eq!(m.routing.patient_ids.len(), ev.pid.identifiers.len());
        let pv1 = ev.pv1.unwrap();
        assert_eq!(
            m.routing.patient_class.as_deref(),
            Some(pv1.patient_class.as_str())
        );
        assert_eq!(
            m.routing.visit_number.as_deref(),
            Some(pv1.visit_number.as_str())
        );
        assert_eq!(m.routing.visit_number.as_deref(), Some("V1"));
    }

    #[test]
    fn truncation_character_in_msh2_does_not_shift_fields() {
        let t = A01.replacen("^~\\&|", "^~\\&#|", 1);
        let m = parse_message(&t, &ParseRules::default()).unwrap();
        assert_eq!(m.header.sending_application, "EPIC");
        assert_eq!(m.header.control_id.as_str(), "CTRL1");
    }

    #[test]
    fn lf_and_crlf_and_blank_segments_are_tolerated() {
        let t = A01.replace('\r', "\r\n\n");
        let m = parse_message(&t, &ParseRules::default()).unwrap();
        assert_eq!(m.segment_count, 4);
        assert!(m.problems.is_empty(), "{:?}", m.problems);
    }

    #[test]
    fn rejections_have_codes_and_locations() {
        let r = ParseRules::default();
        let cases: &[(&str, &str, u16)] = &[
            ("hello world", "not_hl7", 100),
            (
                "MSH|^~\\&|A|B|C|D|2020||ADT^A01||P|2.5",
                "missing_control_id",
                101,
            ),
            (
                "MSH|^~\\&|A|B|C|D|2020|||X1|P|2.5",
                "missing_message_type",
                101,
            ),
            (
                "MSH|^~\\&|A|B|C|D|2020||ORU^R01|X1|P|2.5",
                "unsupported_message_type",
                200,
            ),
            (
                "MSH|^~\\&|A|B|C|D|2020||ADT|X1|P|2.5",
                "missing_trigger_event",
                101,
            ),
            (
                "MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|1.0",
                "unsupported_version",
                203,
            ),
        ];
        for (text, reason, code) in cases {
            let e = parse_message(text, &r).unwrap_err();
            assert_eq!((e.reason, e.err.code), (*reason, *code), "{text}");
        }
    }

    #[test]
    fn trigger_falls_back_to_evn1() {
        let t = "MSH|^~\\&|A|B|C|D|2020||ADT|X1|P|2.2\rEVN|A04|2020\rPID|||1";
        let m = parse_message(t, &ParseRules::default()).unwrap();
        assert_eq!(m.header.message_type.trigger, "A04");
    }

    #[test]
    fn processing_id_allow_list() {
        let rules = ParseRules {
            processing_ids: vec!["P".into()],
            ..ParseRules::default()
        };
        let t = A01.replace("|CTRL1|P|", "|CTRL1|T|");
        assert_eq!(parse_message(&t, &rules).unwrap_err().err.code, 202);
    }

    #[test]
    fn content_problems_are_reported_not_rejected() {
        let t = "MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|2.5\rPIDX|1||12345\rPV1|1|I\rZ|x";
        let m = parse_message(t, &ParseRules::default()).unwrap();
        let codes: Vec<u16> = m.problems.iter().map(|p| p.code).collect();
        assert_eq!(codes, vec![100, 100, 100], "{:?}", m.problems);
        // Segments after a bad one are still read.
        assert_eq!(m.routing.patient_class.as_deref(), Some("I"));
        let t = "MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|2.5\rPID|1||\rPV1|1|I";
        let m = parse_message(t, &ParseRules::default()).unwrap();
        assert_eq!(m.problems[0].code, 101);
        assert_eq!(
            m.problems[0].location.as_ref().unwrap().to_string(),
            "PID^1^3"
        );
    }

    #[test]
    fn escapes_are_decoded_in_stored_values() {
        let t = "MSH|^~\\&|A\\T\\B|FAC\\F\\1|C|D|2020||ADT^A01|X\\S\\1|P|2.5\rPID|||1";
        let m = parse_message(t, &ParseRules::default()).unwrap();
        assert_eq!(m.header.sending_application, "A&B");
        assert_eq!(m.header.sending_facility, "FAC|1");
        assert_eq!(m.header.control_id.as_str(), "X^1");
    }

    #[test]
    fn multibyte_characters_at_segment_boundaries_do_not_panic() {
        // Found by the hl7_ack fuzz target: a 2-byte character straddling byte 3.
        for t in [
            "MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|2.5\rPIé|1",
            "MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|2.5\réé\r€",
        ] {
            let m = parse_message(t, &ParseRules::default()).unwrap();
            assert!(!m.problems.is_empty());
        }
        // Also found by the fuzzer: MSH-2 must not be measured past the end of MSH.
        assert!(
            parse_message("MSH|6\rPID|||MR1^^^XYZ||N^E^~\\&|X", &ParseRules::default()).is_err()
        );
    }

    #[test]
    fn field_spec_parsing() {
        assert_eq!(FieldSpec::parse("PID-3").unwrap().field, Some(3));
        assert_eq!(FieldSpec::parse("PV1").unwrap().field, None);
        assert!(FieldSpec::parse("PID-0").is_err());
        assert!(FieldSpec::parse("PIDX-1").is_err());
    }
}
