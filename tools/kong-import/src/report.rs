//! What the import did with each entity: mapped exactly, mapped with differences (each
//! said in one sentence), or not supported (why, and the nearest thing we offer).

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exact,
    Differences,
    Unsupported,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Exact => "exact",
            Status::Differences => "differences",
            Status::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// `service`, `route`, `plugin`, `consumer`, `file`.
    pub kind: &'static str,
    /// The entity as Kong names it (a plugin with its scope).
    pub name: String,
    pub status: Status,
    /// One sentence per difference, or the reason it is not supported.
    pub notes: Vec<String>,
    /// For what is not supported: the nearest thing Portcullis offers.
    pub nearest: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub entries: Vec<Entry>,
}

impl Report {
    /// Records an entity mapped with these notes (none: exactly).
    pub fn mapped(&mut self, kind: &'static str, name: impl Into<String>, notes: Vec<String>) {
        let status = if notes.is_empty() {
            Status::Exact
        } else {
            Status::Differences
        };
        self.entries.push(Entry {
            kind,
            name: name.into(),
            status,
            notes,
            nearest: None,
        });
    }

    pub fn unsupported(
        &mut self,
        kind: &'static str,
        name: impl Into<String>,
        why: impl Into<String>,
        nearest: Option<&str>,
    ) {
        self.entries.push(Entry {
            kind,
            name: name.into(),
            status: Status::Unsupported,
            notes: vec![why.into()],
            nearest: nearest.map(str::to_owned),
        });
    }

    pub fn count(&self, s: Status) -> usize {
        self.entries.iter().filter(|e| e.status == s).count()
    }

    /// One line for stderr.
    pub fn summary(&self) -> String {
        format!(
            "{} entities: {} mapped exactly, {} mapped with differences, {} not supported",
            self.entries.len(),
            self.count(Status::Exact),
            self.count(Status::Differences),
            self.count(Status::Unsupported)
        )
    }

    pub fn json(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|e| {
                    json!({"kind": e.kind, "name": e.name, "status": e.status.name(),
                        "notes": e.notes, "nearest": e.nearest})
                })
                .collect(),
        )
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("# Kong import report\n\n");
        out.push_str(&self.summary());
        out.push_str(".\n");
        for (status, title) in [
            (Status::Unsupported, "Not supported"),
            (Status::Differences, "Mapped with differences"),
            (Status::Exact, "Mapped exactly"),
        ] {
            let list: Vec<&Entry> = self.entries.iter().filter(|e| e.status == status).collect();
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!("\n## {title}\n\n"));
            for e in list {
                out.push_str(&format!("- {} {}", e.kind, e.name));
                match e.notes.len() {
                    0 => out.push('\n'),
                    _ => {
                        out.push_str(":\n");
                        for n in &e.notes {
                            out.push_str(&format!("  - {n}\n"));
                        }
                    }
                }
                if let Some(n) = &e.nearest {
                    out.push_str(&format!("  - Nearest: {n}\n"));
                }
            }
        }
        out
    }
}
