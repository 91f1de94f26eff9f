//! A small typed reader over a parsed TOML table. It takes fields one by one with the type it
//! expects, and at the end reports any key nobody asked for (with a "did you mean" when a known
//! key is close). This gives one-line errors that name the exact field, which serde's derive
//! cannot do for nested tables.

use crate::error::ConfigError;
use crate::subnet::Family;
use std::collections::BTreeSet;
use std::net::IpAddr;
use toml::{Table, Value};

pub(crate) struct Reader<'a> {
    source: &'a str,
    path: String,
    table: &'a Table,
    asked: BTreeSet<&'static str>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(source: &'a str, path: impl Into<String>, table: &'a Table) -> Self {
        Self { source, path: path.into(), table, asked: BTreeSet::new() }
    }

    /// True for a table with no keys (also a missing sub-table).
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Where the table came from (a file path), as errors name it.
    pub(crate) fn source(&self) -> &'a str {
        self.source
    }

    /// The dotted path of this table itself (e.g. `pods[0].dns`).
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub(crate) fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.source, self.field_path(key), message)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.asked.insert(key);
        self.table.get(key)
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> ConfigError {
        self.err(key, format!("expected {want}, found {}", type_name(got)))
    }

    pub(crate) fn opt_str(&mut self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    pub(crate) fn req_str(&mut self, key: &'static str) -> Result<&'a str, ConfigError> {
        self.opt_str(key)?.ok_or_else(|| self.err(key, "required, expected a string"))
    }

    pub(crate) fn opt_bool(&mut self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "true or false", v)),
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn opt_int(&mut self, key: &'static str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if (min..=max).contains(i) => Ok(Some(*i)),
            Some(Value::Integer(i)) => {
                Err(self.err(key, format!("expected an integer from {min} to {max}, found {i}")))
            }
            Some(v) => Err(self.wrong_type(key, &format!("an integer from {min} to {max}"), v)),
        }
    }

    /// A number (integer or float) in `min..=max`.
    pub(crate) fn opt_f64(&mut self, key: &'static str, min: f64, max: f64) -> Result<Option<f64>, ConfigError> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => return Err(self.wrong_type(key, &format!("a number from {min} to {max}"), v)),
        };
        if !(min..=max).contains(&v) {
            return Err(self.err(key, format!("expected a number from {min} to {max}, found {v}")));
        }
        Ok(Some(v))
    }

    /// An address of `family` (the other family is refused like any other non-address).
    pub(crate) fn opt_ip(&mut self, key: &'static str, family: Family) -> Result<Option<IpAddr>, ConfigError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => {
                match s.parse::<IpAddr>() {
                    Ok(ip) if Family::of(ip) == family => Ok(Some(ip)),
                    _ => Err(self
                        .err(key, format!("expected an {family} address like {}, found {s:?}", family.example_addr()))),
                }
            }
        }
    }

    pub(crate) fn opt_str_array(&mut self, key: &'static str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.as_str()),
                        other => {
                            return Err(self
                                .err(&format!("{key}[{i}]"), format!("expected a string, found {}", type_name(other))))
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(v) => Err(self.wrong_type(key, "an array of strings", v)),
        }
    }

    /// A sub-table; a missing one reads as empty so that defaults apply.
    pub(crate) fn table(&mut self, key: &'static str) -> Result<Reader<'a>, ConfigError> {
        static EMPTY: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
        let path = self.field_path(key);
        match self.get(key) {
            None => Ok(Reader::new(self.source, path, EMPTY.get_or_init(Table::new))),
            Some(Value::Table(t)) => Ok(Reader::new(self.source, path, t)),
            Some(v) => Err(self.wrong_type(key, "a table", v)),
        }
    }

    /// An array of tables (`[[key]]`); missing reads as empty.
    pub(crate) fn table_array(&mut self, key: &'static str) -> Result<Vec<Reader<'a>>, ConfigError> {
        let base = self.field_path(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Table(t) => Ok(Reader::new(self.source, format!("{base}[{i}]"), t)),
                    other => Err(ConfigError::new(
                        self.source,
                        format!("{base}[{i}]"),
                        format!("expected a table, found {}", type_name(other)),
                    )),
                })
                .collect(),
            Some(v) => Err(self.wrong_type(key, "an array of tables ([[...]])", v)),
        }
    }

    /// Fails on the first key that no `get` asked for, suggesting the closest known key.
    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        for key in self.table.keys() {
            if self.asked.contains(key.as_str()) {
                continue;
            }
            let best =
                self.asked.iter().map(|k| (edit_distance(key, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 3)).min();
            let msg = match best {
                Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
                None => {
                    let known: Vec<_> = self.asked.iter().copied().collect();
                    format!("unknown key (known keys here: {})", known.join(", "))
                }
            };
            return Err(self.err(key, msg));
        }
        Ok(())
    }
}

/// Levenshtein distance, for "did you mean" suggestions on short keys.
/// A config file's text, with the name its errors use.
pub(crate) fn read_file(path: &std::path::Path) -> Result<(String, String), ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(&source, "", format!("cannot read: {e}")))?;
    Ok((source, text))
}

/// The TOML table of `text`, or one error naming `source` and where in it the syntax broke.
pub(crate) fn parse_table(source: &str, text: &str) -> Result<Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().trim().to_string();
        let at = e
            .span()
            .map(|s| line_col(text, s.start))
            .map(|(l, c)| format!(" (line {l}, column {c})"))
            .unwrap_or_default();
        ConfigError::new(source, "", format!("invalid TOML{at}: {msg}"))
    })
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("endpoint", "endpoints"), 1);
        assert_eq!(edit_distance("node_nmae", "node_name"), 2);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
