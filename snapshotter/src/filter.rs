//! containerd's filter expressions, as `List` receives them: a list of filters OR'ed, each a
//! `,`-separated list of conditions AND'ed, each `selector [op value]` with `op` one of `==`,
//! `!=`, `~=` (regular expression). A selector is a `.`-separated field path whose parts may
//! be quoted (`labels."containerd.io/snapshot.ref"`); a value is bare (up to the next `,`) or
//! quoted with Go-style escapes. A selector without an operator tests presence.
//!
//! Snapshot fields: `name`, `parent`, `kind` (`active`, `view`, `committed`) and
//! `labels.<key>` (the rest of the path, joined with `.`, is the label key).

use std::collections::BTreeMap;

use regex::Regex;

use crate::error::{Error, Result};

#[derive(Debug)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Cond {
    path: Vec<String>,
    op: Op,
}

/// A parsed list of filters; an empty list matches everything.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Cond>>);

/// What a filter looks at.
#[derive(Debug)]
pub struct Fields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters> {
        let mut all = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            all.push(
                parse_one(f)
                    .map_err(|why| Error::InvalidArgument(format!("filter {f:?}: {why}")))?,
            );
        }
        Ok(Filters(all))
    }

    pub fn matches(&self, x: &Fields) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|conds| conds.iter().all(|c| c.matches(x)))
    }
}

impl Cond {
    fn matches(&self, x: &Fields) -> bool {
        let value: Option<&str> = match self.path[0].as_str() {
            "name" if self.path.len() == 1 => Some(x.name),
            "parent" if self.path.len() == 1 => Some(x.parent),
            "kind" if self.path.len() == 1 => Some(x.kind),
            "labels" if self.path.len() > 1 => {
                x.labels.get(&self.path[1..].join(".")).map(String::as_str)
            }
            _ => None,
        };
        match (&self.op, value) {
            (Op::Present, v) => v.is_some_and(|v| !v.is_empty()),
            (Op::Eq(want), v) => v.unwrap_or("") == want,
            (Op::Ne(want), v) => v.unwrap_or("") != want,
            (Op::Matches(re), Some(v)) => re.is_match(v),
            (Op::Matches(_), None) => false,
        }
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, t: &str) -> bool {
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    fn quoted(&mut self) -> std::result::Result<String, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                c if c == q => return String::from_utf8(out).map_err(|_| "not UTF-8".to_string()),
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".into())
    }
    fn field(&mut self) -> std::result::Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'`') => self.quoted(),
            _ => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b'.' || c == b',' || b"=!~\"".contains(&c) || c.is_ascii_whitespace() {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return Err(format!("expected a field name at byte {start}"));
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
        }
    }
    fn value(&mut self) -> std::result::Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'`') => self.quoted(),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c != b',') {
                    self.i += 1;
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i])
                    .trim()
                    .to_string())
            }
        }
    }
}

fn parse_one(f: &str) -> std::result::Result<Vec<Cond>, String> {
    let mut sc = Scanner {
        s: f.as_bytes(),
        i: 0,
    };
    let mut conds = Vec::new();
    loop {
        let mut path = vec![sc.field()?];
        while sc.peek() == Some(b'.') {
            sc.i += 1;
            path.push(sc.field()?);
        }
        sc.skip_ws();
        let op = if sc.eat("==") {
            Op::Eq(sc.value()?)
        } else if sc.eat("!=") {
            Op::Ne(sc.value()?)
        } else if sc.eat("~=") {
            let v = sc.value()?;
            Op::Matches(Regex::new(&v).map_err(|e| format!("bad regular expression: {e}"))?)
        } else {
            Op::Present
        };
        conds.push(Cond { path, op });
        sc.skip_ws();
        match sc.peek() {
            None => return Ok(conds),
            Some(b',') => sc.i += 1,
            Some(c) => return Err(format!("unexpected {:?} at byte {}", c as char, sc.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(labels: &'a BTreeMap<String, String>) -> Fields<'a> {
        Fields {
            name: "n1",
            parent: "",
            kind: "committed",
            labels,
        }
    }

    fn m(f: &[&str], labels: &BTreeMap<String, String>) -> bool {
        let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(&fields(labels))
    }

    #[test]
    fn containerds_filters_select_what_containerd_expects() {
        let mut l = BTreeMap::new();
        l.insert(
            "containerd.io/snapshot.ref".to_string(),
            "sha256:abc".to_string(),
        );
        l.insert("a".to_string(), "x y".to_string());
        // What containerd 1.6 sends after a remote Prepare answered AlreadyExists.
        assert!(m(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#],
            &l
        ));
        assert!(!m(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p""#],
            &l
        ));
        // Unquoted label paths are joined back with dots.
        assert!(m(&["labels.containerd.io/snapshot.ref==sha256:abc"], &l));
        assert!(m(&["kind==committed", "name==zz"], &l), "filters are OR'ed");
        assert!(
            !m(&["kind==committed,name==zz"], &l),
            "conditions are AND'ed"
        );
        assert!(m(&["labels.a"], &l) && !m(&["labels.b"], &l), "presence");
        assert!(m(&[r#"labels.a=="x y""#, "name~=^n[0-9]$"], &l));
        assert!(m(&["name!=other"], &l) && !m(&["name!=n1"], &l));
        assert!(m(&[], &l) && m(&["  "], &l), "no filter matches all");
        for bad in ["==x", "name~=(", r#"labels."open"#, "name==x)y,", "name x"] {
            let r = Filters::parse(&[bad.to_string()]);
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{bad}: {r:?}");
        }
    }
}
