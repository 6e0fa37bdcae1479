//! A small walker over a parsed TOML document that collects every problem instead of stopping
//! at the first, as serde's `deny_unknown_fields` would: an operator fixing a config file wants the
//! whole list in one go, each naming its key.

use crate::config::ConfigError;

pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// One TOML table being read; keys read are remembered so [`Table::finish`] can name the rest.
pub(crate) struct Table<'a> {
    path: String,
    table: &'a toml::Table,
    known: Vec<&'static str>,
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl<'a> Table<'a> {
    pub(crate) fn new(path: impl Into<String>, table: &'a toml::Table) -> Self {
        Table {
            path: path.into(),
            table,
            known: Vec::new(),
        }
    }

    /// The full key of `key` inside this table, as it appears in error messages.
    pub(crate) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Whether the key is present at all (to tell "missing" from "wrong type").
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// An argv template at `key` (a list of strings) that must contain `placeholder`: what
    /// to say when it is empty (`if_empty`) and when the placeholder is missing (`if_missing`).
    pub(crate) fn argv_template(
        &mut self,
        errs: &mut Errors,
        key: &'static str,
        placeholder: &str,
        if_empty: &str,
        if_missing: &str,
    ) -> Vec<String> {
        let argv: Vec<String> = self
            .strings(errs, key)
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect();
        if argv.is_empty() {
            errs.push(self.key(key), if_empty);
        } else if !argv.iter().any(|a| a.contains(placeholder)) {
            errs.push(self.key(key), if_missing);
        }
        argv
    }

    /// Marks `key` as read without reading it (its error has been reported already).
    pub(crate) fn take(&mut self, key: &'static str) {
        self.known.push(key);
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.known.push(key);
        self.table.get(key)
    }

    fn wrong(&self, errs: &mut Errors, key: &str, want: &str, v: &toml::Value) {
        errs.push(
            self.key(key),
            format!("expected {want}, found {}", type_name(v)),
        );
    }

    pub(crate) fn str(&mut self, errs: &mut Errors, key: &'static str) -> Option<&'a str> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s),
            v => {
                self.wrong(errs, key, "a string", v);
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, errs: &mut Errors, key: &'static str) -> Option<bool> {
        match self.get(key)? {
            toml::Value::Boolean(b) => Some(*b),
            v => {
                self.wrong(errs, key, "true or false", v);
                None
            }
        }
    }

    pub(crate) fn uint(&mut self, errs: &mut Errors, key: &'static str) -> Option<u64> {
        match self.get(key)? {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
            toml::Value::Integer(i) => {
                errs.push(self.key(key), format!("must not be negative, found {i}"));
                None
            }
            v => {
                self.wrong(errs, key, "a whole number", v);
                None
            }
        }
    }

    /// A string parsed by `parse`, whose error message is reported under this key.
    pub(crate) fn parsed<T>(
        &mut self,
        errs: &mut Errors,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.str(errs, key)?;
        match parse(s) {
            Ok(v) => Some(v),
            Err(e) => {
                errs.push(self.key(key), e);
                None
            }
        }
    }

    /// A size: a whole number of bytes, or a string with a unit (`"10MiB"`).
    pub(crate) fn size(&mut self, errs: &mut Errors, key: &'static str) -> Option<u64> {
        match self.get(key)? {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
            toml::Value::String(s) => match crate::units::parse_size(s) {
                Ok(n) => Some(n),
                Err(e) => {
                    errs.push(self.key(key), e);
                    None
                }
            },
            v => {
                self.wrong(errs, key, "a size such as \"10MiB\"", v);
                None
            }
        }
    }

    pub(crate) fn strings(&mut self, errs: &mut Errors, key: &'static str) -> Option<Vec<&'a str>> {
        match self.get(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.as_str()),
                        v => self.wrong(errs, &format!("{key}[{i}]"), "a string", v),
                    }
                }
                Some(out)
            }
            v => {
                self.wrong(errs, key, "an array of strings", v);
                None
            }
        }
    }

    pub(crate) fn table(&mut self, errs: &mut Errors, key: &'static str) -> Option<Table<'a>> {
        match self.get(key)? {
            toml::Value::Table(t) => Some(Table::new(self.key(key), t)),
            v => {
                self.wrong(errs, key, "a table", v);
                None
            }
        }
    }

    /// A table of named tables (`[sandbox.profiles.NAME]`), each with its name.
    pub(crate) fn named_tables(
        &mut self,
        errs: &mut Errors,
        key: &'static str,
    ) -> Vec<(&'a str, Table<'a>)> {
        let Some(t) = self.table(errs, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, v) in t.table {
            let path = t.key(name);
            match v {
                toml::Value::Table(inner) => out.push((name.as_str(), Table::new(path, inner))),
                v => errs.push(path, format!("expected a table, found {}", type_name(v))),
            }
        }
        out
    }

    /// An array of tables (`[[projects]]`), each with its indexed path (`projects[2]`).
    pub(crate) fn tables(&mut self, errs: &mut Errors, key: &'static str) -> Vec<Table<'a>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let toml::Value::Array(items) = v else {
            self.wrong(errs, key, "an array of tables", v);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.key(key));
            match item {
                toml::Value::Table(t) => out.push(Table::new(path, t)),
                v => errs.push(path, format!("expected a table, found {}", type_name(v))),
            }
        }
        out
    }

    /// Reports every key of this table that nothing read: a typo must not be silently ignored.
    pub(crate) fn finish(self, errs: &mut Errors) {
        for key in self.table.keys() {
            if !self.known.iter().any(|k| k == key) {
                let mut known = self.known.clone();
                known.sort_unstable();
                known.dedup();
                errs.push(
                    self.key(key),
                    format!("unknown key (known here: {})", known.join(", ")),
                );
            }
        }
    }
}
