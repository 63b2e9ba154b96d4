//! The one way adt-router reads a field beyond MSH: by position, with the message's own
//! separators, each component's first subcomponent, escapes decoded, trimmed. Ingest
//! (the patient key, class and visit it stores) and routing (the typed ADT event) both
//! read through it, so a field never reads two ways.

use super::adt::Identifier;
use super::escape::unescape;
use hl7_parser::message::Separators;

/// Field access by position, with escapes decoded.
pub struct FieldReader {
    pub seps: Separators,
}

impl FieldReader {
    pub fn repeats<'a>(&self, field: &'a str) -> impl Iterator<Item = &'a str> {
        field.split(self.seps.repetition).filter(|r| !r.is_empty())
    }

    pub fn raw_component<'a>(&self, rep: &'a str, n: usize) -> &'a str {
        rep.split(self.seps.component).nth(n - 1).unwrap_or("")
    }

    /// Component `n` (1-based), its first subcomponent, unescaped and trimmed.
    pub fn component(&self, rep: &str, n: usize) -> String {
        self.sub(self.raw_component(rep, n), 1)
    }

    pub fn sub(&self, comp: &str, n: usize) -> String {
        let raw = comp.split(self.seps.subcomponent).nth(n - 1).unwrap_or("");
        unescape(raw, &self.seps).trim().to_string()
    }

    pub fn identifiers(&self, field: &str) -> Vec<Identifier> {
        self.repeats(field)
            .filter_map(|rep| {
                let id = self.component(rep, 1);
                if id.is_empty() {
                    return None;
                }
                let hd = self.raw_component(rep, 4);
                Some(Identifier {
                    id,
                    authority_namespace: self.sub(hd, 1),
                    authority_universal: self.sub(hd, 2),
                    type_code: self.component(rep, 5),
                })
            })
            .collect()
    }
}
