//! Reading what a HISP sends back about a Direct message (standards.md §6.5): an MDN
//! (RFC 8098, `multipart/report; report-type=disposition-notification`) or a DSN
//! (RFC 3464, `report-type=delivery-status`). Only the fields that decide a
//! notification's state are read; the raw report is kept beside them as proof.

use mail_parser::{MessageParser, MimeHeaders};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    Mdn,
    Dsn,
    /// Not a delivery report (kept, matched to nothing).
    Other,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Mdn => "mdn",
            ReportKind::Dsn => "dsn",
            ReportKind::Other => "other",
        }
    }
}

/// What a report says, in the terms that move a Direct notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// MDN processed: the recipient's HISP has it, decrypted and trusted.
    Processed,
    /// MDN dispatched: handed to the final destination.
    Dispatched,
    /// A failure MDN (failed, denied, deleted, or an error modifier) or a failed DSN.
    Failed,
    /// Anything else (a delayed or relayed DSN, a displayed MDN): recorded only.
    Informational,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub kind: ReportKind,
    pub signal: Signal,
    /// The disposition type (MDN) or action (DSN), lower case.
    pub disposition: String,
    pub final_recipient: Option<String>,
    /// `Original-Message-ID` (MDN), or the returned message's `Message-ID` (DSN).
    pub original_message_id: Option<String>,
    /// DSN `Status` (such as 5.1.1), MDN `Failure`/`Error` text.
    pub detail: Option<String>,
    /// The dispatched MDN answers a timely-and-reliable request.
    pub final_destination: bool,
}

/// `Name: value` fields of a report part (folded lines joined), names lower-cased.
fn fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn field<'a>(fs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fs.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `rfc822; addr` → `addr`.
fn address(v: &str) -> String {
    v.split_once(';')
        .map_or(v, |(_, a)| a)
        .trim()
        .to_ascii_lowercase()
}

/// `<id@host>` as written, with the angle brackets.
fn message_id(v: &str) -> String {
    let v = v.trim();
    if v.starts_with('<') {
        v.split_inclusive('>').next().unwrap_or(v).to_string()
    } else {
        format!("<{v}>")
    }
}

/// Reads a report. Anything that is not one comes back as `ReportKind::Other`.
pub fn parse(raw: &[u8]) -> Report {
    let other = Report {
        kind: ReportKind::Other,
        signal: Signal::Informational,
        disposition: String::new(),
        final_recipient: None,
        original_message_id: None,
        detail: None,
        final_destination: false,
    };
    let Some(msg) = MessageParser::default().parse(raw) else {
        return other;
    };
    let mut mdn = None;
    let mut dsn = None;
    let mut returned_id = None;
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ct.ctype().to_ascii_lowercase().as_str(), sub.as_str()) {
            ("message", "disposition-notification" | "global-disposition-notification") => {
                mdn = Some(fields(&String::from_utf8_lossy(part.contents())));
            }
            ("message", "delivery-status" | "global-delivery-status") => {
                dsn = Some(fields(&String::from_utf8_lossy(part.contents())));
            }
            ("message", "rfc822" | "global") => {
                if let Some(id) = part.message().and_then(|m| m.message_id()) {
                    returned_id = Some(message_id(id));
                }
            }
            ("text", "rfc822-headers") => {
                let fs = fields(&String::from_utf8_lossy(part.contents()));
                if let Some(id) = field(&fs, "message-id") {
                    returned_id = Some(message_id(id));
                }
            }
            _ => {}
        }
    }
    if let Some(fs) = mdn {
        // `automatic-action/MDN-sent-automatically; processed/error`
        let disp = field(&fs, "disposition").unwrap_or("");
        let ty = disp.split_once(';').map_or(disp, |(_, t)| t).trim();
        let (ty, modifier) = ty.split_once('/').unwrap_or((ty, ""));
        let ty = ty.trim().to_ascii_lowercase();
        let error = modifier.to_ascii_lowercase().contains("error")
            || field(&fs, "failure").is_some()
            || field(&fs, "error").is_some();
        let signal = match ty.as_str() {
            _ if error => Signal::Failed,
            "failed" | "denied" | "deleted" => Signal::Failed,
            "processed" => Signal::Processed,
            "dispatched" => Signal::Dispatched,
            _ => Signal::Informational,
        };
        return Report {
            kind: ReportKind::Mdn,
            signal,
            disposition: ty,
            final_recipient: field(&fs, "final-recipient").map(address),
            original_message_id: field(&fs, "original-message-id")
                .map(message_id)
                .or(returned_id),
            detail: field(&fs, "failure")
                .or_else(|| field(&fs, "error"))
                .map(str::to_string),
            final_destination: fs
                .iter()
                .any(|(n, _)| n == "x-direct-final-destination-delivery"),
        };
    }
    if let Some(fs) = dsn {
        // Per-recipient groups follow the per-message one; the first failed one decides.
        let action = fs
            .iter()
            .filter(|(n, _)| n == "action")
            .map(|(_, v)| v.to_ascii_lowercase())
            .min_by_key(|a| if a == "failed" { 0 } else { 1 })
            .unwrap_or_default();
        return Report {
            kind: ReportKind::Dsn,
            signal: if action == "failed" {
                Signal::Failed
            } else {
                Signal::Informational
            },
            disposition: action,
            final_recipient: field(&fs, "final-recipient").map(address),
            original_message_id: returned_id
                .or_else(|| msg.in_reply_to().as_text().map(message_id)),
            detail: field(&fs, "status").map(|s| match field(&fs, "diagnostic-code") {
                Some(d) => format!("{s} ({d})"),
                None => s.to_string(),
            }),
            final_destination: false,
        };
    }
    other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mdn(disposition: &str, extra: &str) -> Vec<u8> {
        format!(
            "From: hisp@direct.example.org\r\nTo: router@direct.hospital.example\r\n\
             Subject: Processed: notification\r\nMessage-ID: <mdn1@direct.example.org>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=disposition-notification; boundary=\"b1\"\r\n\r\n\
             --b1\r\nContent-Type: text/plain\r\n\r\nYour message was {disposition}.\r\n\
             --b1\r\nContent-Type: message/disposition-notification\r\n\r\n\
             Reporting-UA: hisp.example.org; test\r\n\
             Original-Recipient: rfc822; Dr.Smith@direct.example.org\r\n\
             Final-Recipient: rfc822; Dr.Smith@direct.example.org\r\n\
             Original-Message-ID: <abc123@direct.hospital.example>\r\n\
             Disposition: automatic-action/MDN-sent-automatically;\r\n {disposition}\r\n{extra}\
             \r\n--b1--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn reads_processed_and_dispatched_mdns() {
        let r = parse(&mdn("processed", ""));
        assert_eq!(r.kind, ReportKind::Mdn);
        assert_eq!(r.signal, Signal::Processed);
        assert_eq!(
            r.original_message_id.as_deref(),
            Some("<abc123@direct.hospital.example>")
        );
        assert_eq!(
            r.final_recipient.as_deref(),
            Some("dr.smith@direct.example.org")
        );
        let r = parse(&mdn(
            "dispatched",
            "X-DIRECT-FINAL-DESTINATION-DELIVERY: \r\n",
        ));
        assert_eq!(r.signal, Signal::Dispatched);
        assert!(r.final_destination, "the extension field is there (empty)");
        assert!(!parse(&mdn("dispatched", "")).final_destination);
    }

    #[test]
    fn failure_mdns_fail() {
        for d in ["failed", "denied", "deleted", "processed/error"] {
            assert_eq!(parse(&mdn(d, "")).signal, Signal::Failed, "{d}");
        }
        let r = parse(&mdn("processed", "Failure: certificate not trusted\r\n"));
        assert_eq!(r.signal, Signal::Failed);
        assert_eq!(r.detail.as_deref(), Some("certificate not trusted"));
        assert_eq!(parse(&mdn("displayed", "")).signal, Signal::Informational);
    }

    #[test]
    fn reads_a_failed_dsn_with_the_returned_headers() {
        let raw = b"From: MAILER-DAEMON@hisp.example\r\nTo: router@direct.hospital.example\r\n\
            Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"XX\"\r\n\r\n\
            --XX\r\nContent-Type: text/plain\r\n\r\nNot delivered.\r\n\
            --XX\r\nContent-Type: message/delivery-status\r\n\r\n\
            Reporting-MTA: dns; hisp.example\r\n\r\n\
            Final-Recipient: rfc822; nobody@direct.example.org\r\nAction: failed\r\n\
            Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 no such user\r\n\r\n\
            --XX\r\nContent-Type: text/rfc822-headers\r\n\r\n\
            From: router@direct.hospital.example\r\nMessage-ID: <k1@direct.hospital.example>\r\n\
            --XX--\r\n";
        let r = parse(raw);
        assert_eq!(r.kind, ReportKind::Dsn);
        assert_eq!(r.signal, Signal::Failed);
        assert_eq!(
            r.original_message_id.as_deref(),
            Some("<k1@direct.hospital.example>")
        );
        assert_eq!(r.detail.as_deref(), Some("5.1.1 (smtp; 550 no such user)"));
        assert_eq!(
            r.final_recipient.as_deref(),
            Some("nobody@direct.example.org")
        );
    }

    #[test]
    fn anything_else_is_other() {
        assert_eq!(parse(b"").kind, ReportKind::Other);
        assert_eq!(
            parse(b"Subject: hello\r\n\r\njust mail\r\n").kind,
            ReportKind::Other
        );
        assert_eq!(parse(&[0xff; 64]).kind, ReportKind::Other);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = parse(&raw);
        }
    }
}
