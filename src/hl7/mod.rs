//! HL7 v2: everything that is pure text work, with no I/O.
//!
//! - [`charset`] turns the raw frame bytes into text, honouring MSH-18.
//! - [`parse`] reads the header (MSH) and the few fields ingest needs
//!   (EVN, PID-3, PV1-2, PV1-19) through the `hl7-parser` crate.
//! - [`ack`] builds ACK messages, and is the one place where an ingest outcome
//!   becomes AA/AE/AR or CA/CE/CR.
//!
//! Routing reads the full typed ADT event ([`adt`]).

pub mod ack;
pub mod adt;
pub mod charset;
#[cfg(feature = "server")]
pub mod config;
pub mod escape;
pub mod parse;
pub mod patient;
pub mod read;
pub mod types;

pub use ack::{ack_code as ack_code_for, AcceptAck, AckCode, Disposition, ErrDetail, ErrLocation};
pub use charset::Charset;
pub use parse::{parse_message, ParseRules, ParsedMessage, Rejection};
pub use types::{AckCondition, AckMode, ControlId, MessageType};
