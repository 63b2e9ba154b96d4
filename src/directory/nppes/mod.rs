//! Imports the CMS NPPES downloadable files: `npidata_pfile` (one row per NPI, ~330
//! columns) and `endpoint_pfile` (one row per endpoint), streamed (standards §5).
//!
//! Atomicity: every import loads a new snapshot, a table of its own
//! (`nppes_provider_<import id>`, `nppes_endpoint_<import id>`), while the live one keeps
//! serving. Only when every file given has loaded and passed its checks does one
//! transaction switch to it (full) or merge it in (incremental). A failure at any point
//! drops the half-loaded table and leaves the directory as it was.
//!
//! A table per snapshot rather than one table tagged by snapshot: the index is built
//! once, by sorting, after the rows are in (NPPES files are not in NPI order, and
//! inserting millions of random keys into a live index was the import's main cost), and
//! retiring a snapshot is a `DROP TABLE`, not a multi-million-row `DELETE`.
//!
//! [`format`] is the file format, pure: headers, row checks, the columns a snapshot
//! keeps. [`import`] streams a file through it into a new snapshot. The SQL (snapshot
//! tables, the switch and the merge) is in [`crate::store::nppes`].

pub mod format;
mod import;

pub use format::{BadRow, FileKind};
pub use import::{import, FileReport, ImportReport, ImportRequest};

use super::csvfile::FileError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: {bad} bad rows, more than the limit of {limit} (first: {first})")]
    TooManyBadRows {
        file: String,
        bad: u64,
        limit: u64,
        first: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
