//! Scenario tests: the real binary, real clients, real databases.
//! Each test starts its own server on free ports with its own database.

mod support;

mod attacks;
mod attribution;
mod corpus;
mod crash;
mod delivery;
mod direct;
mod directory;
mod fhir;
mod framing;
mod kafka;
mod outbox;
mod postgres;
mod routing;
mod shutdown;
mod storage_failure;
mod tls;
