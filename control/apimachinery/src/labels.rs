//! Label selectors (`k8s.io/apimachinery/pkg/labels` and
//! `metav1.LabelSelectorAsSelector`, Kubernetes 1.33).
//!
//! The string parser is a port of Kubernetes' lexer/parser rather than a fresh
//! grammar: kubectl passes `-l` through untouched, so the odd corners — `in`
//! as a value, `(,)`, empty values, the exact error wording — must behave as the
//! real API server does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::SelectorError;
use crate::json::{go_quote, string_map};
use crate::validation::{validate_label_key, validate_label_value};

/// How a requirement relates a label key to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key in (a,b)` / `matchExpressions` `In`.
    In,
    /// `key notin (a,b)` / `NotIn`: also true when the key is absent.
    NotIn,
    /// `key=value` / `matchLabels`.
    Equals,
    /// `key==value`.
    DoubleEquals,
    /// `key!=value`: also true when the key is absent.
    NotEquals,
    /// `key` / `Exists`.
    Exists,
    /// `!key` / `DoesNotExist`.
    DoesNotExist,
    /// `key>5`: the label must parse as an integer greater than the value.
    GreaterThan,
    /// `key<5`.
    LessThan,
}

impl Operator {
    /// The `selection.Operator` string, used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

/// One clause of a selector: a key, an operator and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Builds a validated requirement (`labels.NewRequirement`): the key must be a
    /// qualified name, the value count must suit the operator, and every value must
    /// be a valid label value. All problems are reported together, as Kubernetes does.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs: Vec<String> = Vec::new();
        let key_errs = validate_label_key(key);
        if !key_errs.is_empty() {
            errs.push(format!("key: Invalid value: {}: {}", go_quote(key), key_errs.join("; ")));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => errs.push(format!(
                "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                go_string_slice(&values)
            )),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => errs.push(format!(
                "values: Invalid value: {}: exact-match compatibility requires one single value",
                go_string_slice(&values)
            )),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(format!(
                "values: Invalid value: {}: values set must be empty for exists and does not exist",
                go_string_slice(&values)
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        go_string_slice(&values)
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                            go_quote(v)
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let value_errs = validate_label_value(v);
            if !value_errs.is_empty() {
                errs.push(format!("values[{i}][{key}]: Invalid value: {}: {}", go_quote(v), value_errs.join("; ")));
            }
        }
        if errs.is_empty() {
            Ok(Requirement { key: key.to_string(), operator, values })
        } else {
            Err(SelectorError::InvalidLabelSelector(aggregate(errs)))
        }
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values (empty for `Exists`/`DoesNotExist`).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a label set satisfies this requirement (`Requirement.Matches`).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let has_value = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                labels.get(&self.key).is_some_and(|v| has_value(v))
            }
            Operator::NotIn | Operator::NotEquals => labels.get(&self.key).is_none_or(|v| !has_value(v)),
            Operator::Exists => labels.contains_key(&self.key),
            Operator::DoesNotExist => !labels.contains_key(&self.key),
            Operator::GreaterThan | Operator::LessThan => {
                // Kubernetes treats a non-integer label, or a malformed requirement,
                // as "does not match" rather than an error.
                let Some(actual) = labels.get(&self.key).and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let [wanted] = self.values.as_slice() else {
                    return false;
                };
                let Ok(wanted) = wanted.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan { actual > wanted } else { actual < wanted }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// The canonical string form (`Requirement.String`), e.g. `env in (a,b)`;
    /// set values are printed sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.operator, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        let mut values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        values.sort_unstable();
        f.write_str(&values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A parsed label selector: the AND of its requirements.
///
/// The empty selector matches everything. [`LabelSelector::nothing`] (what a
/// `null` `metav1.LabelSelector` means) matches no object at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    matches_nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every label set (`labels.Everything()`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches nothing (`labels.Nothing()`): what Kubernetes
    /// makes of a nil `metav1.LabelSelector`, e.g. a PodDisruptionBudget without
    /// a selector.
    pub fn nothing() -> Self {
        LabelSelector { requirements: Vec::new(), matches_nothing: true }
    }

    /// A selector matching exactly the given labels (`labels.SelectorFromSet`),
    /// e.g. a Service's or ReplicationController's `spec.selector` map. Like
    /// Kubernetes, it does not validate the set.
    pub fn from_set(set: &BTreeMap<String, String>) -> Self {
        let requirements = set
            .iter()
            .map(|(k, v)| Requirement { key: k.clone(), operator: Operator::Equals, values: vec![v.clone()] })
            .collect();
        LabelSelector { requirements, matches_nothing: false }
    }

    /// Parses the string form used by `?labelSelector=` and `kubectl -l`
    /// (`labels.Parse`): `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
    /// `a`, `!a`, `a>1`, `a<1`, comma-separated, whitespace tolerant.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser::new(selector);
        let mut requirements = parser.parse().map_err(SelectorError::InvalidLabelSelector)?;
        // Kubernetes sorts by key so that String() is deterministic.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements, matches_nothing: false })
    }

    /// Converts a `metav1.LabelSelector` object — `{matchLabels, matchExpressions}` —
    /// as `metav1.LabelSelectorAsSelector` does: `null` selects nothing, `{}`
    /// selects everything, and invalid keys, values or operators are errors
    /// worded as Kubernetes words them.
    pub fn from_label_selector_json(selector: &Value) -> Result<Self, SelectorError> {
        let obj = match selector {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(obj) => obj,
            other => {
                return Err(decode_error(format!(
                    "json: cannot unmarshal {} into Go value of type v1.LabelSelector",
                    json_type(other)
                )));
            }
        };
        let match_labels = match obj.get("matchLabels") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(decode_error(format!(
                    "json: cannot unmarshal {} into Go struct field LabelSelector.matchLabels of type map[string]string",
                    json_type(other)
                )));
            }
        };
        let expressions: &[Value] = match obj.get("matchExpressions") {
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(decode_error(format!(
                    "json: cannot unmarshal {} into Go struct field LabelSelector.matchExpressions of type []v1.LabelSelectorRequirement",
                    json_type(other)
                )));
            }
        };
        if match_labels.is_empty() && expressions.is_empty() {
            return Ok(Self::everything());
        }
        let mut requirements = Vec::with_capacity(match_labels.len() + expressions.len());
        for (k, v) in &match_labels {
            let Some(v) = v.as_str() else {
                return Err(decode_error(format!(
                    "json: cannot unmarshal {} into Go struct field LabelSelector.matchLabels of type string",
                    json_type(v)
                )));
            };
            requirements.push(Requirement::new(k, Operator::Equals, vec![v.to_string()])?);
        }
        for expr in expressions {
            requirements.push(requirement_from_json(expr)?);
        }
        // `selector.Add` sorts by key; stable so equal keys keep their written order.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements, matches_nothing: false })
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True for the match-everything selector (no requirements).
    pub fn is_empty(&self) -> bool {
        !self.matches_nothing && self.requirements.is_empty()
    }

    /// True for [`LabelSelector::nothing`].
    pub fn matches_nothing(&self) -> bool {
        self.matches_nothing
    }

    /// Whether the label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.matches_nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the object's `metadata.labels` satisfy the selector; an object
    /// without labels has the empty label set.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.matches_nothing {
            return false;
        }
        if self.requirements.is_empty() {
            return true;
        }
        self.matches(&string_map(&object["metadata"]["labels"]))
    }

    /// If the selector pins `key` to a single value (`key=v`, `key==v` or
    /// `key in (v)`), that value — lets the server use an index
    /// (`RequiresExactMatch`).
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string form (`Selector.String`): requirements joined by
    /// commas; empty for both everything and nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// `labels.FormatLabels`: `k=v` pairs sorted by key, or `<none>`.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".to_string();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `metav1.FormatLabelSelector`: the selector's string form, `<none>` when it is
/// empty (or selects nothing) and `<error>` when it is invalid.
pub fn format_label_selector(selector: &Value) -> String {
    match LabelSelector::from_label_selector_json(selector) {
        Err(_) => "<error>".to_string(),
        Ok(s) => {
            let l = s.to_string();
            if l.is_empty() { "<none>".to_string() } else { l }
        }
    }
}

fn requirement_from_json(expr: &Value) -> Result<Requirement, SelectorError> {
    let Value::Object(expr) = expr else {
        return Err(decode_error(format!(
            "json: cannot unmarshal {} into Go struct field LabelSelector.matchExpressions of type v1.LabelSelectorRequirement",
            json_type(expr)
        )));
    };
    let field_str = |name: &str| -> Result<String, SelectorError> {
        match expr.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(decode_error(format!(
                "json: cannot unmarshal {} into Go struct field LabelSelectorRequirement.matchExpressions.{name} of type string",
                json_type(other)
            ))),
        }
    };
    let key = field_str("key")?;
    let operator = field_str("operator")?;
    let mut values = Vec::new();
    match expr.get("values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for v in a {
                match v {
                    Value::String(s) => values.push(s.clone()),
                    other => {
                        return Err(decode_error(format!(
                            "json: cannot unmarshal {} into Go struct field LabelSelectorRequirement.matchExpressions.values of type string",
                            json_type(other)
                        )));
                    }
                }
            }
        }
        Some(other) => {
            return Err(decode_error(format!(
                "json: cannot unmarshal {} into Go struct field LabelSelectorRequirement.matchExpressions.values of type []string",
                json_type(other)
            )));
        }
    }
    let op = match operator.as_str() {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(SelectorError::InvalidLabelSelector(format!(
                "{} is not a valid label selector operator",
                go_quote(other)
            )));
        }
    };
    Requirement::new(&key, op, values)
}

fn decode_error(msg: String) -> SelectorError {
    SelectorError::InvalidLabelSelector(msg)
}

/// The JSON type names Go's `encoding/json` uses in `UnmarshalTypeError`.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Go's `%#v` of a `[]string`, as it appears in `field.Invalid` messages.
/// Empty value lists only reach validation from `matchExpressions`, where
/// Kubernetes has copied them with `append([]string(nil), ...)`, hence `(nil)`.
fn go_string_slice(values: &[String]) -> String {
    if values.is_empty() {
        return "[]string(nil)".to_string();
    }
    let quoted: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// `utilerrors.Aggregate.Error()`: one message alone, several de-duplicated in brackets.
fn aggregate(errs: Vec<String>) -> String {
    let mut seen = BTreeSet::new();
    let unique: Vec<String> = errs.into_iter().filter(|e| seen.insert(e.clone())).collect();
    if unique.len() == 1 { unique.into_iter().next().unwrap_or_default() } else { format!("[{}]", unique.join(", ")) }
}

// ---------------------------------------------------------------------------
// Lexer and parser, ported from k8s.io/apimachinery/pkg/labels/selector.go.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Error,
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn literal_token(s: &[u8]) -> Option<Token> {
    Some(match s {
        b")" => Token::ClosedPar,
        b"," => Token::Comma,
        b"!" => Token::DoesNotExist,
        b"==" => Token::DoubleEquals,
        b"=" => Token::Equals,
        b">" => Token::GreaterThan,
        b"in" => Token::In,
        b"<" => Token::LessThan,
        b"!=" => Token::NotEquals,
        b"notin" => Token::NotIn,
        b"(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special_symbol(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Lexer<'_> {
    /// Go's lexer reads a NUL byte as end of input; keep that so a selector
    /// with an embedded NUL means the same thing here as on a real server.
    fn read(&mut self) -> u8 {
        match self.s.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => 0,
        }
    }

    fn unread(&mut self) {
        self.pos = self.pos.saturating_sub(1);
    }

    fn scan_id_or_keyword(&mut self) -> (Token, String) {
        let start = self.pos;
        loop {
            match self.read() {
                0 => break,
                c if is_special_symbol(c) || is_whitespace(c) => {
                    self.unread();
                    break;
                }
                _ => {}
            }
        }
        // A NUL byte may have ended the scan one past the identifier.
        let end = if self.pos > start && self.s.get(self.pos - 1) == Some(&0) { self.pos - 1 } else { self.pos };
        let bytes = &self.s[start..end];
        let lit = String::from_utf8_lossy(bytes).into_owned();
        match literal_token(bytes) {
            Some(t) => (t, lit),
            None => (Token::Identifier, lit),
        }
    }

    fn scan_special_symbol(&mut self) -> (Token, String) {
        let mut buffer: Vec<u8> = Vec::new();
        let mut last: Option<(Token, String)> = None;
        loop {
            match self.read() {
                0 => break,
                c if is_special_symbol(c) => {
                    buffer.push(c);
                    if let Some(t) = literal_token(&buffer) {
                        last = Some((t, String::from_utf8_lossy(&buffer).into_owned()));
                    } else if last.is_some() {
                        self.unread();
                        break;
                    }
                }
                _ => {
                    self.unread();
                    break;
                }
            }
        }
        last.unwrap_or_else(|| {
            (Token::Error, format!("error expected: keyword found '{}'", String::from_utf8_lossy(&buffer)))
        })
    }

    fn lex(&mut self) -> (Token, String) {
        let mut c = self.read();
        while is_whitespace(c) {
            c = self.read();
        }
        if c == 0 {
            return (Token::EndOfString, String::new());
        }
        self.unread();
        if is_special_symbol(c) { self.scan_special_symbol() } else { self.scan_id_or_keyword() }
    }
}

/// Whether `in`/`notin` are operators (after a key) or plain identifiers
/// (as values, e.g. `x in (in)`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Token, String)>,
    position: usize,
}

impl Parser {
    fn new(selector: &str) -> Self {
        let mut lexer = Lexer { s: selector.as_bytes(), pos: 0 };
        let mut items = Vec::new();
        loop {
            let item = lexer.lex();
            let done = item.0 == Token::EndOfString;
            items.push(item);
            if done {
                break;
            }
        }
        Parser { items, position: 0 }
    }

    fn item(&self, index: usize, ctx: Context) -> (Token, String) {
        let (tok, lit) = self.items.get(index).cloned().unwrap_or((Token::EndOfString, String::new()));
        match tok {
            Token::In | Token::NotIn if ctx == Context::Values => (Token::Identifier, lit),
            _ => (tok, lit),
        }
    }

    fn lookahead(&self, ctx: Context) -> (Token, String) {
        self.item(self.position, ctx)
    }

    fn consume(&mut self, ctx: Context) -> (Token, String) {
        let item = self.item(self.position, ctx);
        self.position += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let r = self.parse_requirement().map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(r);
                    let (t, l) = self.consume(Context::Values);
                    match t {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (t2, l2) = self.lookahead(Context::Values);
                            if t2 != Token::Identifier && t2 != Token::DoesNotExist {
                                return Err(format!("found '{l2}', expected: identifier after ','"));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => return Err(format!("found '{lit}', expected: !, identifier, or 'end of string'")),
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = inferred {
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.to_string());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, operator, values.into_iter().collect()).map_err(|e| e.to_string())
    }

    /// Reads `[!]key`; infers `Exists`/`DoesNotExist` when nothing follows the key.
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut operator = None;
        let (mut tok, mut literal) = self.consume(Context::Values);
        if tok == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            (tok, literal) = self.consume(Context::Values);
        }
        if tok != Token::Identifier {
            return Err(format!("found '{literal}', expected: identifier"));
        }
        let errs = validate_label_key(&literal);
        if !errs.is_empty() {
            // The parser validates with a nil field path, which Go prints as "<nil>".
            return Err(format!("<nil>: Invalid value: {}: {}", go_quote(&literal), errs.join("; ")));
        }
        let (next, _) = self.lookahead(Context::Values);
        if (next == Token::EndOfString || next == Token::Comma) && operator != Some(Operator::DoesNotExist) {
            operator = Some(Operator::Exists);
        }
        Ok((literal, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => return Err(format!("found '{lit}', expected: '=', '!=', '==', 'in', notin'")),
        })
    }

    /// `(a,b,c)`: a de-duplicated, sorted set (Go's `sets.String`), where empty
    /// entries such as in `(,a)` or `()` stand for the empty value.
    fn parse_values(&mut self) -> Result<BTreeSet<String>, String> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Token::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let s = self.parse_identifiers_list()?;
                if self.consume(Context::Values).0 != Token::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(s)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, String> {
        let mut s = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Token::Identifier => {
                    s.insert(lit);
                    let (tok2, lit2) = self.lookahead(Context::Values);
                    match tok2 {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(s),
                        _ => return Err(format!("found '{lit2}', expected: ',' or ')'")),
                    }
                }
                Token::Comma => {
                    if s.is_empty() {
                        s.insert(String::new());
                    }
                    let (tok2, _) = self.lookahead(Context::Values);
                    if tok2 == Token::ClosedPar {
                        s.insert(String::new());
                        return Ok(s);
                    }
                    if tok2 == Token::Comma {
                        self.consume(Context::Values);
                        s.insert(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    /// The single value after `=`, `==`, `!=`, `>` or `<`; nothing (end or comma)
    /// means the empty value.
    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        let (tok, _) = self.lookahead(Context::Values);
        if tok == Token::EndOfString || tok == Token::Comma {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Token::Identifier {
            return Ok(BTreeSet::from([lit]));
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn err(s: &str) -> String {
        LabelSelector::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_operator_and_round_trips() {
        let cases = [
            ("a=b", "a=b"),
            ("a==b", "a==b"),
            ("a!=b", "a!=b"),
            ("a in (y,x)", "a in (x,y)"),
            ("a notin (x)", "a notin (x)"),
            ("a", "a"),
            ("!a", "!a"),
            ("a>1", "a>1"),
            ("a<1", "a<1"),
            ("  b = 1 ,\ta in ( x , y ) ", "a in (x,y),b=1"),
            ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z notin ()"),
            ("a=", "a="),
            ("a in (in)", "a in (in)"),
            ("", ""),
            ("   ", ""),
        ];
        for (input, want) in cases {
            let s = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(s.to_string(), want, "{input}");
        }
    }

    #[test]
    fn matching_semantics() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("n", "5")]);
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (web,db)",
            "app notin (db)",
            "missing notin (x)",
            "app",
            "!missing",
            "n>4",
            "n<6",
            "app=web,tier=frontend",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "app notin (web)",
            "missing",
            "!app",
            "n>5",
            "n<5",
            "app>1",
            "missing=x",
            "missing in (x)",
            "app=web,tier=backend",
            "app=",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s} should not match");
        }
        // The empty value matches only a present, empty label.
        assert!(LabelSelector::parse("e=").unwrap().matches(&labels(&[("e", "")])));
    }

    #[test]
    fn parse_errors_are_worded_as_kubernetes() {
        assert_eq!(err("a b"), "unable to parse requirement: found 'b', expected: '=', '!=', '==', 'in', notin'");
        assert_eq!(err("a in b"), "unable to parse requirement: found 'b' expected: '('");
        assert_eq!(err("a in (x y)"), "unable to parse requirement: found 'y', expected: ',' or ')'");
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(err(",a"), "found ',', expected: !, identifier, or 'end of string'");
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(err("!"), "unable to parse requirement: found '', expected: identifier");
        assert_eq!(err("a=(b)"), "unable to parse requirement: found '(', expected: identifier");
        assert_eq!(
            err("-a=b"),
            "unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert_eq!(
            err("a=b@c"),
            "unable to parse requirement: values[0][a]: Invalid value: \"b@c\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        assert_eq!(
            err("a>b"),
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        let long = format!("a={}", "v".repeat(64));
        assert!(err(&long).ends_with("must be no more than 63 characters"));
    }

    #[test]
    fn empty_selector_matches_everything_and_nothing_matches_nothing() {
        let l = labels(&[("a", "b")]);
        assert!(LabelSelector::everything().matches(&l));
        assert!(LabelSelector::parse("").unwrap().matches(&BTreeMap::new()));
        assert!(!LabelSelector::nothing().matches(&l));
        assert!(!LabelSelector::nothing().matches_object(&json!({})));
        assert!(LabelSelector::everything().matches_object(&json!("not even an object")));
    }

    #[test]
    fn matches_object_reads_metadata_labels() {
        let s = LabelSelector::parse("app=web").unwrap();
        assert!(s.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!s.matches_object(&json!({"metadata": {"labels": {"app": 1}}})));
        assert!(!s.matches_object(&json!({"metadata": null})));
        assert!(!s.matches_object(&json!([])));
        assert!(LabelSelector::parse("!app").unwrap().matches_object(&json!({})));
    }

    #[test]
    fn label_selector_objects() {
        let s = LabelSelector::from_label_selector_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "zone", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert_eq!(s.to_string(), "app=web,!canary,env notin (dev),tier in (be,fe),zone");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("zone", "a"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "x"), ("zone", "a")])));

        assert!(LabelSelector::from_label_selector_json(&json!({})).unwrap().is_empty());
        assert!(LabelSelector::from_label_selector_json(&json!({"matchLabels": {}})).unwrap().is_empty());
        assert!(LabelSelector::from_label_selector_json(&json!(null)).unwrap().matches_nothing());
        assert_eq!(s.requires_exact_match("app"), Some("web"));
        assert_eq!(s.requires_exact_match("tier"), None);
    }

    #[test]
    fn label_selector_object_errors() {
        let e = |v: Value| LabelSelector::from_label_selector_json(&v).unwrap_err().to_string();
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
            "values: Invalid value: []string{\"x\"}: values set must be empty for exists and does not exist"
        );
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})),
            "\"Near\" is not a valid label selector operator"
        );
        assert_eq!(
            e(json!({"matchLabels": {"bad key": "v"}})),
            "key: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert!(
            e(json!({"matchExpressions": [{"key": "-", "operator": "In"}]})).starts_with("[key: Invalid value: \"-\"")
        );
        assert_eq!(e(json!("app=web")), "json: cannot unmarshal string into Go value of type v1.LabelSelector");
        assert!(e(json!({"matchLabels": {"a": 1}})).contains("cannot unmarshal number"));
        assert!(e(json!({"matchExpressions": {}})).contains("cannot unmarshal object"));
        assert!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}))
                .contains("cannot unmarshal number")
        );
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(format_labels(&BTreeMap::new()), "<none>");
        assert_eq!(format_labels(&labels(&[("b", "2"), ("a", "1")])), "a=1,b=2");
        assert_eq!(format_label_selector(&json!({"matchLabels": {"app": "web"}})), "app=web");
        assert_eq!(format_label_selector(&json!(null)), "<none>");
        assert_eq!(format_label_selector(&json!({})), "<none>");
        assert_eq!(format_label_selector(&json!({"matchExpressions": [{"key": "a", "operator": "X"}]})), "<error>");
        assert_eq!(LabelSelector::from_set(&labels(&[("app", "web")])).to_string(), "app=web");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "(",
            ")",
            "=",
            "!=",
            "a in (",
            "a in (,",
            "a in (a,",
            "a notin",
            "in",
            "in in (in)",
            "\0",
            "a=\0b",
            "é=ü",
            "a in ((b))",
            "!!a",
            "a=b=c",
            ",,",
            "a==",
            "a!",
            "a<",
            "a>",
        ] {
            let _ = LabelSelector::parse(s);
        }
        assert_eq!(LabelSelector::parse("in in (in)").unwrap().to_string(), "in in (in)");
    }
}
