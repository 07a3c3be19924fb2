//! Policy: which spokes may reach which through the hub.
//!
//! The policy lives in `policy.json` in the state directory. Without that
//! file every registered spoke may reach every other. With it, a pair of
//! spokes may talk only if an `allow` rule names them and no `deny` rule
//! does (deny beats allow). Rules are symmetric pairs of terms; a term is a
//! spoke name, `@group` (a group of spoke names) or `*` (every spoke):
//!
//! ```json
//! {
//!   "version": 1,
//!   "groups": {
//!     "web": ["s1", "s2"]
//!   },
//!   "allow": [
//!     ["@web", "@web"],
//!     ["@web", "db"]
//!   ],
//!   "deny": [
//!     ["s2", "db"]
//!   ]
//! }
//! ```
//!
//! Spokes can always reach the hub itself. The hub enforces the policy on
//! handshake initiations (a denied one is dropped and counted), so a denied
//! pair never gets a relayed session; a running hub re-reads the file and
//! closes relayed sessions that are no longer allowed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::core::registry::validate_name;

/// The policy file inside the state directory.
pub const POLICY_FILE: &str = "policy.json";
/// The policy file format version this build reads and writes.
pub const POLICY_VERSION: u64 = 1;

const FORMAT_HINT: &str = "the file is JSON: {\"version\": 1, \"groups\": {\"NAME\": [\"SPOKE\", ...]}, \
     \"allow\": [[\"A\", \"B\"], ...], \"deny\": [[\"A\", \"B\"], ...]} with A, B a spoke name, @group or *";

/// Everything that can go wrong with a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file does not parse or names something it does not define. One
    /// line: where, what, and how to fix it.
    #[error("{path}:{line}:{column}: {detail}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        detail: String,
    },
    /// A command line argument (`policy allow A B` etc.) is not valid.
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}; check that the state directory exists and is writable by this user")]
    Io { path: PathBuf, source: io::Error },
    /// A shared store's own failure (etcd unreachable, ...), one line.
    #[error("{0}")]
    Store(String),
}

impl PolicyError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        PolicyError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// One side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Term {
    /// `*`: every spoke.
    All,
    /// `@name`: the members of a group.
    Group(String),
    /// A spoke, by name.
    Spoke(String),
}

impl Term {
    /// Parses `*`, `@group` or a spoke name; the error says what is wrong
    /// and what would be right.
    pub fn parse(s: &str) -> Result<Term, String> {
        let bad = || {
            format!(
                "{s:?} is not a spoke name, @group or *; names are 1 to {} characters of A-Z a-z 0-9 . _ -",
                crate::core::registry::MAX_NAME_LEN
            )
        };
        if s == "*" {
            Ok(Term::All)
        } else if let Some(g) = s.strip_prefix('@') {
            validate_name(g).map_err(|_| bad())?;
            Ok(Term::Group(g.to_owned()))
        } else {
            validate_name(s).map_err(|_| bad())?;
            Ok(Term::Spoke(s.to_owned()))
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::All => f.write_str("*"),
            Term::Group(g) => write!(f, "@{g}"),
            Term::Spoke(s) => f.write_str(s),
        }
    }
}

/// A symmetric pair: `A <-> B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(pub Term, pub Term);

impl Rule {
    /// Same pair, either order.
    fn same(&self, other: &Rule) -> bool {
        (self.0 == other.0 && self.1 == other.1) || (self.0 == other.1 && self.1 == other.0)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <-> {}", self.0, self.1)
    }
}

/// A parsed, valid policy (every `@group` a rule names is defined).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub groups: BTreeMap<String, Vec<String>>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    /// Who may use the hub as its exit to the internet (`spoke add
    /// --exit` routes a spoke's internet traffic to the hub; the hub
    /// forwards it only for these). Empty: nobody.
    pub exit: Vec<Term>,
}

impl Policy {
    /// What "no policy file" means: `* <-> *`.
    pub fn allow_all() -> Policy {
        Policy {
            allow: vec![Rule(Term::All, Term::All)],
            ..Policy::default()
        }
    }

    fn matches(&self, t: &Term, spoke: &str) -> bool {
        match t {
            Term::All => true,
            Term::Spoke(s) => s == spoke,
            Term::Group(g) => self
                .groups
                .get(g)
                .is_some_and(|m| m.iter().any(|x| x == spoke)),
        }
    }

    fn rule_matches(&self, r: &Rule, a: &str, b: &str) -> bool {
        (self.matches(&r.0, a) && self.matches(&r.1, b))
            || (self.matches(&r.0, b) && self.matches(&r.1, a))
    }

    /// The deny rule that blocks `a <-> b`, if any.
    pub fn denied_by(&self, a: &str, b: &str) -> Option<&Rule> {
        self.deny.iter().find(|r| self.rule_matches(r, a, b))
    }

    /// Whether spoke `name` may use the hub as its exit.
    pub fn may_exit(&self, name: &str) -> bool {
        self.exit.iter().any(|t| self.matches(t, name))
    }

    /// `policy exit allow TERM`: let TERM use the hub as exit.
    pub fn allow_exit(&mut self, t: Term) -> Result<(), PolicyError> {
        self.check_term(&t)?;
        if !self.exit.contains(&t) {
            self.exit.push(t);
        }
        Ok(())
    }

    /// `policy exit deny TERM`: remove TERM from the exit users. Fails if
    /// the term is not listed (a spoke still allowed through a group or
    /// `*` would be a surprise: the error names what lets it out).
    pub fn deny_exit(&mut self, t: &Term) -> Result<(), PolicyError> {
        let before = self.exit.len();
        self.exit.retain(|x| x != t);
        if let Term::Spoke(name) = t
            && let Some(via) = self.exit.iter().find(|x| self.matches(x, name))
        {
            return Err(PolicyError::Usage(format!(
                "{name} may still exit through the hub by {via}; `relayhub policy exit deny {via}` or change the group"
            )));
        }
        if self.exit.len() == before {
            return Err(PolicyError::Usage(format!(
                "{t} is not among the exit users ({})",
                if self.exit.is_empty() {
                    "there are none".to_string()
                } else {
                    self.exit
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        Ok(())
    }

    /// Whether spokes `a` and `b` may reach each other.
    pub fn allows(&self, a: &str, b: &str) -> bool {
        self.allow.iter().any(|r| self.rule_matches(r, a, b)) && self.denied_by(a, b).is_none()
    }

    /// The `@group`s a rule names that are not defined.
    fn check_groups(&self) -> Result<(), String> {
        let rules = self.allow.iter().chain(&self.deny);
        for t in rules.flat_map(|r| [&r.0, &r.1]).chain(&self.exit) {
            if let Term::Group(g) = t
                && !self.groups.contains_key(g)
            {
                return Err(g.clone());
            }
        }
        Ok(())
    }

    /// Parses the policy file format. `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let file: PolicyFile = serde_json::from_str(text).map_err(|e| json_error(&e, path))?;
        if let Some(v) = file.version
            && v != POLICY_VERSION
        {
            let (line, column) = locate(text, "\"version\"");
            return Err(PolicyError::Invalid {
                path: path.to_owned(),
                line,
                column,
                detail: format!(
                    "policy format version {v} is not supported; this relayhub reads \"version\": {POLICY_VERSION}"
                ),
            });
        }
        let policy = Policy {
            groups: file.groups.0,
            allow: file.allow.into_iter().map(|p| Rule(p.0, p.1)).collect(),
            deny: file.deny.into_iter().map(|p| Rule(p.0, p.1)).collect(),
            exit: file.exit.into_iter().map(|t| t.0).collect(),
        };
        if let Err(g) = policy.check_groups() {
            let (line, column) = locate(text, &format!("\"@{g}\""));
            return Err(PolicyError::Invalid {
                path: path.to_owned(),
                line,
                column,
                detail: format!(
                    "a rule names group @{g}, which is not defined; add \"{g}\": [\"SPOKE\", ...] under \"groups\" or fix the name"
                ),
            });
        }
        Ok(policy)
    }

    /// The file format: JSON, one rule a line, ending in a newline.
    pub fn to_json(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let mut out = format!("{{\n  \"version\": {POLICY_VERSION},\n  \"groups\": {{");
        for (i, (g, members)) in self.groups.iter().enumerate() {
            let m: Vec<String> = members.iter().map(|s| q(s)).collect();
            out.push_str(if i == 0 { "\n" } else { ",\n" });
            out.push_str(&format!("    {}: [{}]", q(g), m.join(", ")));
        }
        out.push_str(if self.groups.is_empty() { "}" } else { "\n  }" });
        for (name, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            out.push_str(&format!(",\n  \"{name}\": ["));
            for (i, r) in rules.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&format!(
                    "    [{}, {}]",
                    q(&r.0.to_string()),
                    q(&r.1.to_string())
                ));
            }
            out.push_str(if rules.is_empty() { "]" } else { "\n  ]" });
        }
        // Absent without exit users: files stay as earlier releases wrote them.
        if !self.exit.is_empty() {
            let t: Vec<String> = self.exit.iter().map(|t| q(&t.to_string())).collect();
            out.push_str(&format!(",\n  \"exit\": [{}]", t.join(", ")));
        }
        out.push_str("\n}\n");
        out
    }

    /// `policy allow A B`: drop an exact `A <-> B` deny rule and add the
    /// allow rule unless the pair (two spokes) is already allowed. Fails if
    /// another deny rule would still block two named spokes.
    pub fn allow_pair(&mut self, a: Term, b: Term) -> Result<(), PolicyError> {
        self.check_term(&a)?;
        self.check_term(&b)?;
        let rule = Rule(a, b);
        self.deny.retain(|r| !r.same(&rule));
        let spokes = spoke_pair(&rule);
        if let Some((x, y)) = spokes
            && self.allows(x, y)
        {
            return Ok(());
        }
        if !self.allow.iter().any(|r| r.same(&rule)) {
            self.allow.push(rule.clone());
        }
        if let Some((x, y)) = spokes
            && let Some(d) = self.denied_by(x, y)
        {
            return Err(PolicyError::Usage(format!(
                "{x} <-> {y} stays denied by the deny rule {d}; edit the policy file and load it with \
                 `relayhub policy set FILE` to change that rule"
            )));
        }
        Ok(())
    }

    /// `policy deny A B`: drop an exact `A <-> B` allow rule and add the
    /// deny rule unless that already denies the pair (two spokes).
    pub fn deny_pair(&mut self, a: Term, b: Term) -> Result<(), PolicyError> {
        self.check_term(&a)?;
        self.check_term(&b)?;
        let rule = Rule(a, b);
        self.allow.retain(|r| !r.same(&rule));
        if let Some((x, y)) = spoke_pair(&rule)
            && !self.allows(x, y)
        {
            return Ok(());
        }
        if !self.deny.iter().any(|r| r.same(&rule)) {
            self.deny.push(rule);
        }
        Ok(())
    }

    /// `policy group NAME MEMBERS...`: set a group's members; no members
    /// removes it (refused while a rule names it).
    pub fn set_group(&mut self, name: &str, members: &[String]) -> Result<(), PolicyError> {
        validate_name(name).map_err(|e| PolicyError::Usage(format!("group name: {e}")))?;
        if members.is_empty() {
            let named = self
                .allow
                .iter()
                .chain(&self.deny)
                .find(|r| [&r.0, &r.1].contains(&&Term::Group(name.to_owned())));
            if let Some(r) = named {
                return Err(PolicyError::Usage(format!(
                    "group @{name} is used by the rule {r}; remove the rule first (`relayhub policy set FILE`)"
                )));
            }
            if self.exit.contains(&Term::Group(name.to_owned())) {
                return Err(PolicyError::Usage(format!(
                    "group @{name} may exit through the hub; `relayhub policy exit deny @{name}` first"
                )));
            }
            self.groups.remove(name);
            return Ok(());
        }
        let mut list: Vec<String> = Vec::new();
        for m in members {
            validate_name(m).map_err(|e| {
                PolicyError::Usage(format!(
                    "group members are spoke names (groups do not nest): {e}"
                ))
            })?;
            if !list.contains(m) {
                list.push(m.clone());
            }
        }
        self.groups.insert(name.to_owned(), list);
        Ok(())
    }

    fn check_term(&self, t: &Term) -> Result<(), PolicyError> {
        match t {
            Term::Group(g) if !self.groups.contains_key(g) => Err(PolicyError::Usage(format!(
                "group @{g} is not defined; define it first with `relayhub policy group {g} SPOKE...`"
            ))),
            _ => Ok(()),
        }
    }

    /// Spoke names the policy mentions (rules and groups), sorted.
    pub fn spoke_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .groups
            .values()
            .flatten()
            .map(String::as_str)
            .chain(
                self.allow
                    .iter()
                    .chain(&self.deny)
                    .flat_map(|r| [&r.0, &r.1])
                    .chain(&self.exit)
                    .filter_map(|t| match t {
                        Term::Spoke(s) => Some(s.as_str()),
                        _ => None,
                    }),
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn spoke_pair(r: &Rule) -> Option<(&str, &str)> {
    match (&r.0, &r.1) {
        (Term::Spoke(a), Term::Spoke(b)) => Some((a, b)),
        _ => None,
    }
}

/// 1-based line and column of the first occurrence of `needle` (1:1 if
/// absent).
fn locate(text: &str, needle: &str) -> (usize, usize) {
    let Some(at) = text.find(needle) else {
        return (1, 1);
    };
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn json_error(e: &serde_json::Error, path: &Path) -> PolicyError {
    use serde_json::error::Category;
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
    let detail = match e.classify() {
        Category::Syntax | Category::Eof => format!("not valid JSON: {msg}; {FORMAT_HINT}"),
        Category::Data if msg.contains("; ") => msg.to_owned(),
        Category::Data => format!("{msg}; {FORMAT_HINT}"),
        Category::Io => msg.to_owned(),
    };
    PolicyError::Invalid {
        path: path.to_owned(),
        line: e.line().max(1),
        column: e.column().max(1),
        detail,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: Option<u64>,
    #[serde(default)]
    groups: Groups,
    #[serde(default)]
    allow: Vec<PairDe>,
    #[serde(default)]
    deny: Vec<PairDe>,
    #[serde(default)]
    exit: Vec<TermDe>,
}

/// `["A", "B"]`, checked while parsing.
struct PairDe(Term, Term);

impl<'de> Deserialize<'de> for PairDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let terms = Vec::<TermDe>::deserialize(d)?;
        let n = terms.len();
        match <[TermDe; 2]>::try_from(terms) {
            Ok([a, b]) => Ok(PairDe(a.0, b.0)),
            Err(_) => Err(de::Error::custom(format!(
                "this rule has {n} terms; a rule is a pair like [\"s1\", \"@group\"]"
            ))),
        }
    }
}

/// A term, validated while parsing (so errors carry a position).
struct TermDe(Term);

impl<'de> Deserialize<'de> for TermDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Term::parse(&s).map(TermDe).map_err(|e| {
            de::Error::custom(format!("{e}; a rule is a pair like [\"s1\", \"@group\"]"))
        })
    }
}

/// A group member, validated while parsing.
struct MemberDe(String);

impl<'de> Deserialize<'de> for MemberDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match validate_name(&s) {
            Ok(()) => Ok(MemberDe(s)),
            Err(_) => Err(de::Error::custom(format!(
                "group member {s:?} is not a spoke name; members are spoke names \
                 (groups do not nest, * is not a member), 1 to {} characters of A-Z a-z 0-9 . _ -",
                crate::core::registry::MAX_NAME_LEN
            ))),
        }
    }
}

/// `"groups"`: names validated, a name given twice is an error.
#[derive(Default)]
struct Groups(BTreeMap<String, Vec<String>>);

impl<'de> Deserialize<'de> for Groups {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Groups;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of group name -> list of spoke names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Groups, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if validate_name(&name).is_err() {
                        return Err(de::Error::custom(format!(
                            "group name {name:?} is not valid; use 1 to {} characters of A-Z a-z 0-9 . _ - (no @ here)",
                            crate::core::registry::MAX_NAME_LEN
                        )));
                    }
                    if out.contains_key(&name) {
                        return Err(de::Error::custom(format!(
                            "group {name:?} is defined twice; merge the two lists"
                        )));
                    }
                    let members: Vec<MemberDe> = map.next_value()?;
                    let mut list: Vec<String> = Vec::new();
                    for MemberDe(m) in members {
                        if !list.contains(&m) {
                            list.push(m);
                        }
                    }
                    out.insert(name, list);
                }
                Ok(Groups(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The policy in slot terms, for the handshake router. The default
/// allows every pair (no policy file).
#[derive(Debug, Clone, Default)]
pub struct SlotPolicy {
    /// `None`: allow all.
    policy: Option<Arc<Policy>>,
    names: HashMap<u32, String>,
}

impl SlotPolicy {
    /// `policy` (`None` = no file) over the registered spokes' slots and names.
    pub fn new(policy: Option<&Policy>, spokes: impl IntoIterator<Item = (u32, String)>) -> Self {
        SlotPolicy {
            policy: policy.map(|p| Arc::new(p.clone())),
            names: spokes.into_iter().collect(),
        }
    }

    /// Whether slots `a` and `b` may reach each other. A slot without a
    /// name is denied whenever a policy is in force.
    pub fn allows(&self, a: u32, b: u32) -> bool {
        let Some(p) = &self.policy else {
            return true;
        };
        match (self.names.get(&a), self.names.get(&b)) {
            (Some(x), Some(y)) => p.allows(x, y),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn p(text: &str) -> Result<Policy, PolicyError> {
        Policy::from_json(text, Path::new("/state/policy.json"))
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    pub(crate) fn t(s: &str) -> Term {
        Term::parse(s).unwrap()
    }

    pub(crate) const EXAMPLE: &str = r#"{
  "version": 1,
  "groups": {
    "web": ["s1", "s2"],
    "db": ["s3", "s4"]
  },
  "allow": [
    ["@web", "@web"],
    ["@web", "@db"],
    ["s5", "*"]
  ],
  "deny": [
    ["s2", "s4"]
  ]
}
"#;

    #[test]
    fn decisions() {
        let pol = p(EXAMPLE).unwrap();
        let yes = [
            ("s1", "s2"),
            ("s2", "s1"),
            ("s1", "s3"),
            ("s4", "s1"),
            ("s2", "s3"),
            ("s5", "s1"),
            ("s5", "s6"),
            ("s6", "s5"),
        ];
        for (a, b) in yes {
            assert!(pol.allows(a, b), "{a} <-> {b}");
        }
        let no = [("s2", "s4"), ("s4", "s2"), ("s3", "s4"), ("s1", "s6")];
        for (a, b) in no {
            assert!(!pol.allows(a, b), "{a} <-> {b}");
        }
        assert_eq!(pol.denied_by("s4", "s2"), Some(&Rule(t("s2"), t("s4"))));
        // No file means everything; an empty file means nothing.
        assert!(Policy::allow_all().allows("a", "b"));
        assert!(!p("{}").unwrap().allows("a", "b"));
        assert_eq!(pol.spoke_names(), ["s1", "s2", "s3", "s4", "s5"]);
    }

    #[test]
    fn round_trips_through_the_file_format() {
        let pol = p(EXAMPLE).unwrap();
        let text = pol.to_json();
        assert_eq!(p(&text).unwrap(), pol);
        assert!(text.contains("    [\"@web\", \"@db\"],\n"), "{text}");
        assert!(text.contains("    \"web\": [\"s1\", \"s2\"]"), "{text}");
        let empty = Policy::default().to_json();
        assert_eq!(
            empty,
            "{\n  \"version\": 1,\n  \"groups\": {},\n  \"allow\": [],\n  \"deny\": []\n}\n"
        );
        assert_eq!(p(&empty).unwrap(), Policy::default());
    }

    #[test]
    fn exit_users() {
        let mut pol = p(EXAMPLE).unwrap();
        // Nobody by default, with a file or without.
        assert!(!pol.may_exit("s1") && !Policy::allow_all().may_exit("s1"));
        pol.allow_exit(t("@web")).unwrap();
        pol.allow_exit(t("s5")).unwrap();
        assert!(pol.may_exit("s1") && pol.may_exit("s2") && pol.may_exit("s5"));
        assert!(!pol.may_exit("s3"));
        assert!(pol.allow_exit(t("@nope")).is_err(), "undefined group");
        // Round trip; files without exit users stay as before.
        let text = pol.to_json();
        assert!(text.contains("\"exit\": [\"@web\", \"s5\"]"), "{text}");
        assert_eq!(p(&text).unwrap(), pol);
        assert!(!p(EXAMPLE).unwrap().to_json().contains("exit"));
        // Taking s1 off while @web lets it out says so.
        let e = pol.deny_exit(&t("s1")).unwrap_err().to_string();
        assert!(e.contains("@web"), "{e}");
        pol.deny_exit(&t("@web")).unwrap();
        assert!(!pol.may_exit("s1"));
        // A group that lets spokes exit is not removed under them.
        pol.allow_exit(t("@db")).unwrap();
        assert!(pol.set_group("db", &[]).is_err());
        // An exit term naming an undefined group is an error in a file.
        assert!(p(r#"{"exit": ["@ghost"]}"#).is_err());
    }

    #[test]
    fn errors_name_file_position_and_fix() {
        // Syntax.
        let e = err("{\n  \"allow\": [[\"a\", \"b\"]\n}");
        assert!(
            e.starts_with("/state/policy.json:3:1: not valid JSON"),
            "{e}"
        );
        assert!(e.contains("\"version\": 1"), "{e}");
        // Unknown field.
        let e = err("{\n  \"alow\": []\n}");
        assert!(
            e.starts_with("/state/policy.json:2:8: unknown field `alow`"),
            "{e}"
        );
        // Bad term, with its position.
        let e = err("{\"allow\": [\n  [\"s1\", \"bad name\"]\n]}");
        assert!(
            e.starts_with("/state/policy.json:2:20: \"bad name\" is not a spoke name, @group or *"),
            "{e}"
        );
        // A rule of three.
        let e = err("{\"allow\": [[\"a\", \"b\", \"c\"]]}");
        assert!(
            e.ends_with(":1:27: this rule has 3 terms; a rule is a pair like [\"s1\", \"@group\"]"),
            "{e}"
        );
        // Undefined group: pointed at where it is used.
        let e = err("{\n  \"groups\": {\"web\": [\"a\"]},\n  \"allow\": [[\"@wbe\", \"*\"]]\n}");
        assert!(
            e.starts_with("/state/policy.json:3:14: a rule names group @wbe, which is not defined; add \"wbe\""),
            "{e}"
        );
        // Nested group, bad group name, duplicate group.
        let e = err("{\"groups\": {\"a\": [\"@b\"]}}");
        assert!(e.contains("groups do not nest"), "{e}");
        let e = err("{\"groups\": {\"a b\": []}}");
        assert!(e.contains("group name \"a b\" is not valid"), "{e}");
        let e = err("{\"groups\": {\"a\": [], \"a\": [\"x\"]}}");
        assert!(e.contains("defined twice"), "{e}");
        // Version.
        let e = err("{\n\"version\": 2}");
        assert!(
            e.starts_with("/state/policy.json:2:1: policy format version 2"),
            "{e}"
        );
        // Every error is one line.
        for bad in ["{", "[]", "{\"deny\": 3}", "{\"groups\": []}"] {
            let e = err(bad);
            assert!(!e.contains('\n') && e.contains("policy.json:"), "{e}");
        }
    }

    #[test]
    fn allow_and_deny_commands() {
        let mut pol = Policy::default();
        pol.allow_pair(t("s1"), t("s2")).unwrap();
        assert_eq!(pol.allow, [Rule(t("s1"), t("s2"))]);
        // Already allowed: nothing added.
        pol.allow_pair(t("s2"), t("s1")).unwrap();
        assert_eq!(pol.allow.len(), 1);
        // Deny removes the exact allow rule; no deny rule is needed.
        pol.deny_pair(t("s2"), t("s1")).unwrap();
        assert!(pol.allow.is_empty() && pol.deny.is_empty());
        // Against a wildcard, a deny rule is added; allow takes it back out.
        let mut all = Policy::allow_all();
        all.deny_pair(t("s1"), t("s3")).unwrap();
        assert_eq!(all.deny, [Rule(t("s1"), t("s3"))]);
        assert!(!all.allows("s1", "s3") && all.allows("s1", "s2"));
        all.allow_pair(t("s3"), t("s1")).unwrap();
        assert!(all.deny.is_empty() && all.allows("s1", "s3"));
        assert_eq!(all.allow.len(), 1);
        // Groups must exist; a broader deny rule is reported, not ignored.
        let e = all.allow_pair(t("@g"), t("s1")).unwrap_err();
        assert!(e.to_string().contains("policy group g"), "{e}");
        all.set_group("g", &["s1".into(), "s2".into(), "s1".into()])
            .unwrap();
        assert_eq!(all.groups["g"], ["s1", "s2"]);
        all.deny_pair(t("@g"), t("*")).unwrap();
        let e = all.allow_pair(t("s1"), t("s4")).unwrap_err().to_string();
        assert!(e.contains("denied by the deny rule @g <-> *"), "{e}");
        let e = all.set_group("g", &[]).unwrap_err().to_string();
        assert!(e.contains("used by the rule @g <-> *"), "{e}");
        assert!(all.set_group("h", &["@x".into()]).is_err());
    }

    #[test]
    fn slot_policy() {
        let pol = p(r#"{"allow": [["a", "b"]]}"#).unwrap();
        let names = [
            (1, "a".to_string()),
            (2, "b".to_string()),
            (3, "c".to_string()),
        ];
        let sp = SlotPolicy::new(Some(&pol), names.clone());
        assert!(sp.allows(1, 2) && sp.allows(2, 1));
        assert!(!sp.allows(1, 3) && !sp.allows(3, 2));
        assert!(!sp.allows(1, 99), "unknown slots are denied under a policy");
        let open = SlotPolicy::new(None, names);
        assert!(open.allows(1, 3) && open.allows(1, 99));
        assert!(SlotPolicy::default().allows(5, 6));
    }
}
