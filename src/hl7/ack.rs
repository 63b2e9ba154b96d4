//! ACK messages (standards §2.4-2.6).
//!
//! [`ack_code`] is the single place where an ingest outcome becomes an acknowledgement
//! code; the table is in its doc comment. [`build_ack`] writes the ACK text, mirroring the
//! inbound header as far as it can be recovered, so even garbage gets a useful answer.

use super::types::{AckCondition, AckMode};
use std::fmt;

/// Table 0008.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    AA,
    AE,
    AR,
    CA,
    CE,
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
    /// AA and CA are the only codes that tell the sender it may forget the message.
    pub fn is_accept(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            _ => return None,
        })
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to an inbound message, independent of acknowledgement mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Durably stored, content fine (or a duplicate of a stored message).
    Accepted,
    /// Durably stored, but the content has problems (e.g. PID-3 empty).
    ContentError,
    /// Not acceptable at all (not HL7, wrong type/version/processing id). Quarantined.
    Rejected,
    /// The event log could not commit it. The sender must send it again.
    NotStored,
}

/// Whether MSH-15 may silence the accept acknowledgement over MLLP (`mllp.accept_ack`).
///
/// HL7 says a receiver sends no accept ACK when MSH-15 is NE (and none on success when it
/// is ER). But MLLP senders wait for an answer to every frame: Mirth Connect / Open
/// Integration Engine's TCP Sender times out and resends forever, blocking its queue.
/// `Always` answers every frame with the code the message earned; `Honour` follows MSH-15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptAck {
    #[default]
    Always,
    Honour,
}

/// Maps a disposition to the code to send, or `None` when MSH-15 says not to answer
/// and `policy` lets it.
///
/// | disposition  | original | enhanced (accept ack) |
/// |--------------|----------|-----------------------|
/// | Accepted     | AA       | CA                    |
/// | ContentError | AE       | CA (+ ERR warning; an application AE is not sent, see docs) |
/// | Rejected     | AR       | CR                    |
/// | NotStored    | AR       | CE                    |
///
/// In enhanced mode MSH-15 then decides: AL always, NE never, ER only for CE/CR, SU only
/// for CA. AR for "not stored" follows v2 §2.8.2: a failure unrelated to content, after
/// which the same message is likely to be accepted, so senders retry it.
pub fn ack_code(mode: AckMode, d: Disposition, policy: AcceptAck) -> Option<AckCode> {
    match mode {
        AckMode::Original => Some(match d {
            Disposition::Accepted => AckCode::AA,
            Disposition::ContentError => AckCode::AE,
            Disposition::Rejected | Disposition::NotStored => AckCode::AR,
        }),
        AckMode::Enhanced { accept, .. } => {
            let code = match d {
                Disposition::Accepted | Disposition::ContentError => AckCode::CA,
                Disposition::Rejected => AckCode::CR,
                Disposition::NotStored => AckCode::CE,
            };
            let send = policy == AcceptAck::Always
                || match accept {
                    AckCondition::Always => true,
                    AckCondition::Never => false,
                    AckCondition::ErrorOnly => !code.is_accept(),
                    AckCondition::SuccessOnly => code.is_accept(),
                };
            send.then_some(code)
        }
    }
}

/// ERR-2 (ERL): where the problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrLocation {
    pub segment: String,
    pub sequence: usize,
    pub field: Option<usize>,
    pub component: Option<usize>,
}

impl ErrLocation {
    pub fn segment(segment: &str, sequence: usize) -> Self {
        ErrLocation {
            segment: segment.into(),
            sequence,
            field: None,
            component: None,
        }
    }
    pub fn field(segment: &str, sequence: usize, field: usize) -> Self {
        ErrLocation {
            field: Some(field),
            ..Self::segment(segment, sequence)
        }
    }
    pub fn component(segment: &str, sequence: usize, field: usize, component: usize) -> Self {
        ErrLocation {
            component: Some(component),
            ..Self::field(segment, sequence, field)
        }
    }
    /// Written with the message's component separator.
    fn write(&self, cs: char) -> String {
        let mut s = format!("{}{cs}{}", self.segment, self.sequence);
        if let Some(f) = self.field {
            s.push_str(&format!("{cs}{f}"));
            if let Some(c) = self.component {
                s.push_str(&format!("{cs}1{cs}{c}"));
            }
        }
        s
    }
}

impl fmt::Display for ErrLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.write('^'))
    }
}

/// Severity, table 0516.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One ERR segment. `diagnostic` must never contain PHI: it is also logged and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrDetail {
    /// Table 0357.
    pub code: u16,
    pub location: Option<ErrLocation>,
    pub severity: Severity,
    pub diagnostic: String,
}

impl ErrDetail {
    pub fn error(code: u16, location: Option<ErrLocation>, diagnostic: String) -> Self {
        ErrDetail {
            code,
            location,
            severity: Severity::Error,
            diagnostic,
        }
    }
    pub fn warning(self) -> Self {
        ErrDetail {
            severity: Severity::Warning,
            ..self
        }
    }
}

/// Table 0357 names.
pub fn error_name(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        104 => "Value too long",
        198 => "Non-conformant cardinality",
        199 => "Other HL7 error",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        _ => "Application internal error",
    }
}

/// The inbound header fields an ACK mirrors, recovered by a plain split of the first
/// segment so that it works on messages the full parser rejects. Values stay escaped:
/// they go back out in the same encoding.
#[derive(Clone, Debug)]
pub struct AckEcho {
    pub field_sep: char,
    pub encoding_chars: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub control_id: String,
    pub trigger: String,
    pub processing_id: String,
    pub version: String,
    pub charset: String,
    pub mode: AckMode,
}

impl AckEcho {
    pub fn recover(text: &str) -> Self {
        let text = text.trim_start_matches(['\r', '\n', ' ', '\t', '\u{feff}']);
        let line = text.split(['\r', '\n']).next().unwrap_or("");
        let b = line.as_bytes();
        let fs = b
            .get(3)
            .copied()
            .filter(|c| line.starts_with("MSH") && c.is_ascii_punctuation() && b.len() >= 8);
        let Some(fs) = fs.map(|c| c as char) else {
            return Self::unknown();
        };
        let tokens: Vec<&str> = line.split(fs).collect();
        let enc = tokens.get(1).copied().unwrap_or("");
        let encoding_chars = if (4..=5).contains(&enc.len()) && enc.is_ascii() {
            enc.to_string()
        } else {
            "^~\\&".to_string()
        };
        let cs = encoding_chars.chars().next().unwrap_or('^');
        let rs = encoding_chars.chars().nth(1).unwrap_or('~');
        let f = |n: usize| tokens.get(n - 1).copied().unwrap_or("").trim();
        let comp = |n: usize, c: usize| {
            f(n).split(rs)
                .next()
                .unwrap_or("")
                .split(cs)
                .nth(c - 1)
                .unwrap_or("")
                .trim()
                .to_string()
        };
        AckEcho {
            field_sep: fs,
            sending_application: f(3).into(),
            sending_facility: f(4).into(),
            receiving_application: f(5).into(),
            receiving_facility: f(6).into(),
            control_id: f(10).into(),
            trigger: comp(9, 2),
            processing_id: comp(11, 1),
            version: comp(12, 1),
            charset: f(18).split(rs).next().unwrap_or("").into(),
            mode: AckMode::from_msh(f(15), f(16)),
            encoding_chars,
        }
    }

    fn unknown() -> Self {
        AckEcho {
            field_sep: '|',
            encoding_chars: "^~\\&".into(),
            sending_application: String::new(),
            sending_facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            control_id: String::new(),
            trigger: String::new(),
            processing_id: String::new(),
            version: String::new(),
            charset: String::new(),
            mode: AckMode::Original,
        }
    }

    /// The minor version number (2.5.1 -> 5); 5 when unknown.
    fn minor(&self) -> u32 {
        self.version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(5)
    }
}

/// Escapes text for a field of the ACK (standards §2.2).
pub fn escape(text: &str, fs: char, enc: &str) -> String {
    let mut e = enc.chars();
    let (cs, rs, esc, ss) = (
        e.next().unwrap_or('^'),
        e.next().unwrap_or('~'),
        e.next().unwrap_or('\\'),
        e.next().unwrap_or('&'),
    );
    let tc = e.next();
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        let code = if ch == fs {
            Some('F')
        } else if ch == cs {
            Some('S')
        } else if ch == rs {
            Some('R')
        } else if ch == esc {
            Some('E')
        } else if ch == ss {
            Some('T')
        } else if Some(ch) == tc {
            Some('P')
        } else {
            None
        };
        match code {
            Some(c) => {
                out.push(esc);
                out.push(c);
                out.push(esc);
            }
            None if ch == '\r' || ch == '\n' => out.push(' '),
            None => out.push(ch),
        }
    }
    out
}

/// Builds the ACK text (segments separated by CR, trailing CR).
///
/// `ack_control_id` is our own MSH-10; `timestamp` is our MSH-7.
pub fn build_ack(
    echo: &AckEcho,
    code: AckCode,
    errors: &[ErrDetail],
    ack_control_id: &str,
    timestamp: &str,
) -> String {
    let fs = echo.field_sep;
    let enc = echo.encoding_chars.as_str();
    let mut ec = enc.chars();
    let cs = ec.next().unwrap_or('^');
    let ss = enc.chars().nth(3).unwrap_or('&');
    let minor = echo.minor();
    let sender = if echo.receiving_application.is_empty() {
        "ADT-ROUTER"
    } else {
        echo.receiving_application.as_str()
    };
    let trigger = escape(&echo.trigger, fs, enc);
    let msh9 = match (trigger.is_empty(), minor >= 4) {
        (true, _) => "ACK".to_string(),
        (false, true) => format!("ACK{cs}{trigger}{cs}ACK"),
        (false, false) => format!("ACK{cs}{trigger}"),
    };
    let processing = if echo.processing_id.is_empty() {
        "P"
    } else {
        &echo.processing_id
    };
    let version = if echo.version.is_empty() {
        "2.5.1"
    } else {
        &echo.version
    };
    let mut out = format!(
        "MSH{fs}{enc}{fs}{sender}{fs}{}{fs}{}{fs}{}{fs}{timestamp}{fs}{fs}{msh9}{fs}{ack_control_id}{fs}{processing}{fs}{version}",
        echo.receiving_facility, echo.sending_application, echo.sending_facility,
    );
    if !echo.charset.is_empty() {
        // MSH-13..17 empty, MSH-18 as inbound.
        out.push_str(&format!("{fs}{fs}{fs}{fs}{fs}{fs}{}", echo.charset));
    }
    out.push('\r');
    out.push_str(&format!("MSA{fs}{code}{fs}{}", echo.control_id));
    // MSA-3 was withdrawn in 2.7, but 2.3-2.6 partners often read only it.
    if let (Some(first), true) = (errors.first(), minor < 7) {
        let text: String = first.diagnostic.chars().take(80).collect();
        out.push_str(&format!("{fs}{}", escape(&text, fs, enc)));
    }
    out.push('\r');
    for e in errors {
        let diag = escape(&e.diagnostic, fs, enc);
        let sev = match e.severity {
            Severity::Error => "E",
            Severity::Warning => "W",
        };
        let name = error_name(e.code);
        if minor >= 5 {
            let loc = e.location.as_ref().map(|l| l.write(cs)).unwrap_or_default();
            out.push_str(&format!(
                "ERR{fs}{fs}{loc}{fs}{}{cs}{name}{cs}HL70357{fs}{sev}{fs}{fs}{fs}{diag}\r",
                e.code
            ));
        } else {
            // ERR-1 (ELD) for 2.3/2.4: segment^sequence^field^code&text&table.
            let loc = e.location.as_ref();
            out.push_str(&format!(
                "ERR{fs}{}{cs}{}{cs}{}{cs}{}{ss}{name}{ss}HL70357\r",
                loc.map(|l| l.segment.as_str()).unwrap_or(""),
                loc.map(|l| l.sequence.to_string()).unwrap_or_default(),
                loc.and_then(|l| l.field)
                    .map(|f| f.to_string())
                    .unwrap_or_default(),
                e.code
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg<'a>(ack: &'a str, name: &str) -> Vec<&'a str> {
        ack.split('\r')
            .find(|s| s.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {ack:?}"))
            .split('|')
            .collect()
    }

    #[test]
    fn ack_code_table() {
        use Disposition::*;
        let code = |m, d| ack_code(m, d, AcceptAck::Honour);
        let orig = AckMode::Original;
        let enh = |a| AckMode::Enhanced {
            accept: a,
            application: AckCondition::Never,
        };
        assert_eq!(code(orig, Accepted), Some(AckCode::AA));
        assert_eq!(code(orig, ContentError), Some(AckCode::AE));
        assert_eq!(code(orig, Rejected), Some(AckCode::AR));
        assert_eq!(code(orig, NotStored), Some(AckCode::AR));
        let al = enh(AckCondition::Always);
        assert_eq!(code(al, Accepted), Some(AckCode::CA));
        assert_eq!(code(al, ContentError), Some(AckCode::CA));
        assert_eq!(code(al, Rejected), Some(AckCode::CR));
        assert_eq!(code(al, NotStored), Some(AckCode::CE));
        assert_eq!(code(enh(AckCondition::Never), Accepted), None);
        assert_eq!(code(enh(AckCondition::Never), NotStored), None);
        assert_eq!(code(enh(AckCondition::ErrorOnly), Accepted), None);
        assert_eq!(
            code(enh(AckCondition::ErrorOnly), NotStored),
            Some(AckCode::CE)
        );
        assert_eq!(
            code(enh(AckCondition::SuccessOnly), Accepted),
            Some(AckCode::CA)
        );
        assert_eq!(code(enh(AckCondition::SuccessOnly), Rejected), None);
        // Answering every frame: NE and ER/SU still get the code the message earned.
        for cond in [
            AckCondition::Never,
            AckCondition::ErrorOnly,
            AckCondition::SuccessOnly,
        ] {
            assert_eq!(
                ack_code(enh(cond), Accepted, AcceptAck::Always),
                Some(AckCode::CA)
            );
            assert_eq!(
                ack_code(enh(cond), NotStored, AcceptAck::Always),
                Some(AckCode::CE)
            );
            assert_eq!(
                ack_code(enh(cond), Rejected, AcceptAck::Always),
                Some(AckCode::CR)
            );
        }
        assert_eq!(
            ack_code(orig, ContentError, AcceptAck::Always),
            Some(AckCode::AE)
        );
    }

    #[test]
    fn ack_mirrors_the_inbound_header() {
        let inbound = "MSH|^~\\&|EPIC|MERCY|ROUTER|HIE|20250301121500||ADT^A04^ADT_A01|MSG000123|T|2.5.1||||||UNICODE UTF-8\rPID|||1";
        let echo = AckEcho::recover(inbound);
        let ack = build_ack(&echo, AckCode::AA, &[], "ACK1", "20250301121501");
        let msh = seg(&ack, "MSH");
        assert_eq!(&msh[2..6], &["ROUTER", "HIE", "EPIC", "MERCY"]);
        assert_eq!(msh[8], "ACK^A04^ACK");
        assert_eq!(msh[9], "ACK1");
        assert_eq!(msh[10], "T");
        assert_eq!(msh[11], "2.5.1");
        assert_eq!(msh[17], "UNICODE UTF-8");
        assert_eq!(seg(&ack, "MSA"), vec!["MSA", "AA", "MSG000123"]);
        assert!(!ack.contains("ERR"));
    }

    #[test]
    fn err_segment_v25_and_v23() {
        let err = ErrDetail::error(
            101,
            Some(ErrLocation::field("PID", 1, 3)),
            "Required field PID-3 is empty".into(),
        );
        let echo = AckEcho::recover("MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|2.5.1\r");
        let ack = build_ack(&echo, AckCode::AE, std::slice::from_ref(&err), "K", "T");
        assert_eq!(
            seg(&ack, "ERR"),
            vec![
                "ERR",
                "",
                "PID^1^3",
                "101^Required field missing^HL70357",
                "E",
                "",
                "",
                "Required field PID-3 is empty"
            ]
        );
        assert_eq!(seg(&ack, "MSA")[3], "Required field PID-3 is empty");
        let echo = AckEcho::recover("MSH|^~\\&|A|B|C|D|2020||ADT^A01|X1|P|2.3\r");
        let ack = build_ack(&echo, AckCode::AE, &[err], "K", "T");
        assert_eq!(
            seg(&ack, "ERR"),
            vec!["ERR", "PID^1^3^101&Required field missing&HL70357"]
        );
        assert_eq!(seg(&ack, "MSH")[8], "ACK^A01");
    }

    #[test]
    fn garbage_gets_a_default_header_and_escaped_text() {
        let echo = AckEcho::recover("hello");
        let err = ErrDetail::error(100, None, "bad | thing ^ here".into());
        let ack = build_ack(&echo, AckCode::AR, &[err], "K", "T");
        assert!(ack.starts_with("MSH|^~\\&|ADT-ROUTER|"));
        assert_eq!(seg(&ack, "MSA")[1..3], ["AR", ""]);
        assert!(ack.contains("bad \\F\\ thing \\S\\ here"));
    }

    #[test]
    fn custom_delimiters_are_kept() {
        let echo = AckEcho::recover("MSH!@#$%!A!B!C!D!2020!!ADT@A01!X9!P!2.5\r");
        let ack = build_ack(&echo, AckCode::AA, &[], "K", "T");
        assert!(
            ack.starts_with("MSH!@#$%!C!D!A!B!T!!ACK@A01@ACK!K!P!2.5\r"),
            "{ack}"
        );
        assert!(ack.contains("MSA!AA!X9"));
    }
}
