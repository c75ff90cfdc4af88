//! Label and field selectors of the test API server.
//!
//! This module owns parsing and matching of equality-based selectors:
//! `key=value`, `key==value`, `key!=value`, comma separated; label selectors
//! also take `key` (exists) and `!key` (absent). Field selectors address a
//! JSON path (`reason`, `metadata.name`, `involvedObject.kind`); a missing
//! field compares as the empty string. Set-based syntax (`in`, `notin`) is
//! rejected with an error, which the server answers with 400.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// A selector the server does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement {0:?}: only equality-based selectors are supported")]
pub struct SelectorError(pub String);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Selector {
    /// Parses a label selector.
    pub fn labels(s: &str) -> Result<Self, SelectorError> {
        Self::parse(s, true)
    }

    /// Parses a field selector.
    pub fn fields(s: &str) -> Result<Self, SelectorError> {
        Self::parse(s, false)
    }

    fn parse(s: &str, allow_existence: bool) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for raw in s.split(',') {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            let bad = || SelectorError(t.to_owned());
            let term = if let Some((k, v)) = t.split_once("!=") {
                Term::Ne(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once("==") {
                Term::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once('=') {
                Term::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if !allow_existence {
                return Err(bad());
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(k.trim().to_owned())
            } else {
                Term::Exists(t.to_owned())
            };
            let key_ok = match &term {
                Term::Eq(k, v) | Term::Ne(k, v) => {
                    valid_key(k) && !v.contains([' ', '(', ')', '=', '!'])
                }
                Term::Exists(k) | Term::Absent(k) => valid_key(k),
            };
            if !key_ok {
                return Err(bad());
            }
            terms.push(term);
        }
        Ok(Selector { terms })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Matches `object`'s `metadata.labels`.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => get(k) == Some(v.as_str()),
            Term::Ne(k, v) => get(k) != Some(v.as_str()),
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
        })
    }

    /// Matches fields of `object` addressed by dotted paths.
    pub fn matches_fields(&self, object: &Value) -> bool {
        let get = |path: &str| -> String {
            let mut cur = object;
            for part in path.split('.') {
                match cur.get(part) {
                    Some(v) => cur = v,
                    None => return String::new(),
                }
            }
            match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }
        };
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => get(k) == *v,
            Term::Ne(k, v) => get(k) != *v,
            Term::Exists(_) | Term::Absent(_) => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let yes = [
            "",
            "app=web",
            "app==web",
            "app=web,tier=front",
            "app",
            "!missing",
            "tier!=back",
            "x!=y",
        ];
        for s in yes {
            assert!(Selector::labels(s).unwrap().matches_labels(&obj), "{s}");
        }
        let no = ["app=db", "app=web,tier=back", "missing", "!app", "app!=web"];
        for s in no {
            assert!(!Selector::labels(s).unwrap().matches_labels(&obj), "{s}");
        }
        assert!(!Selector::labels("app=web")
            .unwrap()
            .matches_labels(&json!({"metadata": {}})));
    }

    #[test]
    fn field_selectors() {
        let ev = json!({"reason": "SuccessfulRescale", "involvedObject": {"kind": "HorizontalPodAutoscaler"}, "count": 3});
        assert!(Selector::fields("reason=SuccessfulRescale")
            .unwrap()
            .matches_fields(&ev));
        assert!(
            Selector::fields("involvedObject.kind==HorizontalPodAutoscaler,count=3")
                .unwrap()
                .matches_fields(&ev)
        );
        assert!(!Selector::fields("reason=Killing")
            .unwrap()
            .matches_fields(&ev));
        assert!(Selector::fields("reason!=Killing")
            .unwrap()
            .matches_fields(&ev));
        assert!(Selector::fields("metadata.name=")
            .unwrap()
            .matches_fields(&ev));
    }

    #[test]
    fn unsupported_syntax_is_an_error() {
        assert!(Selector::labels("app in (a,b)").is_err());
        assert!(Selector::labels("app notin (a)").is_err());
        assert!(Selector::fields("reason").is_err());
        assert!(Selector::labels("=x").is_err());
        assert!(Selector::labels(" , ").unwrap().is_empty());
    }
}
