//! The generic walker: protobuf message + table entry → the JSON Go's `encoding/json` writes for
//! the same Go value.
//!
//! The rules that make this agree with Kubernetes (and with `kubectl … -o json`):
//! - gogo-protobuf writes non-pointer fields even when zero and pointer fields only when set, so a
//!   field's presence on the wire means "set" only for pointers. The JSON therefore follows the Go
//!   value, not the wire: a non-pointer scalar is its last wire value or zero, dropped when zero
//!   and `omitempty`; a pointer is `null`/dropped when absent and written (even `0`, `false`)
//!   when present.
//! - `omitempty` never drops a non-pointer struct in Go, so those are always written, absent or
//!   not (`status: {}`, `resources: {}`, `creationTimestamp: null` for a zero `metav1.Time`).
//! - A nil slice or map without `omitempty` is `null` (`status.currentMetrics: null`).
//! - An embedded struct without a JSON name has its fields promoted (`Volume` ⊃ `VolumeSource`).

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use crate::DecodeError;
use crate::gofmt;
use crate::table::{self, Field, Name, Table, Ty};
use crate::wire::{self, Reader, Value as Wire};

/// Nesting allowed before the input is rejected: the deepest built-in type nests about 15
/// structs, and a `RawExtension` may hold another envelope.
const MAX_DEPTH: u32 = 100;

pub(crate) struct Ctx {
    depth: u32,
    /// JSON nodes still allowed. Absent non-pointer structs expand to their zero JSON, so a few
    /// bytes per repeated element can become many nodes; this keeps output proportional to input.
    budget: u64,
}

impl Ctx {
    pub fn new(input_len: usize) -> Self {
        Ctx { depth: 0, budget: 64 * input_len as u64 + 100_000 }
    }

    fn spend(&mut self) -> Result<(), DecodeError> {
        self.budget =
            self.budget.checked_sub(1).ok_or_else(|| wire::malformed("object expands beyond the size limit"))?;
        Ok(())
    }
}

/// All wire occurrences of each field of a message, in order, indexed like `Struct::fields`.
fn collect<'a>(s: &table::Struct, msg: &'a [u8]) -> Result<Vec<Vec<Wire<'a>>>, DecodeError> {
    let mut occ: Vec<Vec<Wire<'a>>> = vec![Vec::new(); s.fields.len()];
    let mut r = Reader::new(msg);
    while let Some((num, v)) = r.field()? {
        // Unknown fields are skipped, as gogo's generated Unmarshal does: a newer client may
        // send fields this table does not know yet.
        if let Some(i) = s.field(num) {
            occ[i].push(v);
        }
    }
    Ok(occ)
}

/// Decodes a message of struct `idx` to a JSON object.
pub(crate) fn message(idx: usize, msg: &[u8], ctx: &mut Ctx) -> Result<Map<String, Value>, DecodeError> {
    let s = &Table::get().structs[idx];
    ctx.depth += 1;
    if ctx.depth > MAX_DEPTH {
        return Err(wire::malformed("nesting too deep"));
    }
    let occ = collect(s, msg)?;
    let mut out = Map::new();
    for (f, occ) in s.fields.iter().zip(&occ) {
        match &f.name {
            Name::Skip => {}
            Name::Inline => {
                let inner = match &f.ty {
                    Ty::Struct(i) => Some((*i, occ)),
                    Ty::Ptr(t) if !occ.is_empty() => match **t {
                        Ty::Struct(i) => Some((i, occ)),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some((i, occ)) = inner {
                    let bytes = concat(occ)?;
                    // Go's shallower field wins a name clash: a promoted field never replaces one
                    // the outer struct already wrote, and an outer field written later replaces it.
                    for (k, v) in message(i, &bytes, ctx)? {
                        out.entry(k).or_insert(v);
                    }
                }
            }
            Name::Json(name) => {
                if let Some(v) = field(f, &f.ty, occ, ctx).map_err(|e| e.in_field(name))? {
                    ctx.spend()?;
                    out.insert(name.clone(), v);
                }
            }
        }
    }
    ctx.depth -= 1;
    Ok(out)
}

/// The JSON for one field, `None` when Go would leave it out.
fn field(f: &Field, ty: &Ty, occ: &[Wire], ctx: &mut Ctx) -> Result<Option<Value>, DecodeError> {
    let nil = || if f.omitempty { None } else { Some(Value::Null) };
    Ok(match ty {
        Ty::Ptr(inner) => match occ.last() {
            None => nil(),
            Some(_) => Some(present(f, inner, occ, ctx)?),
        },
        Ty::Slice(elem) => {
            let mut items = Vec::new();
            for v in occ {
                repeated(elem, *v, &mut items, ctx)?;
            }
            if items.is_empty() { nil() } else { Some(Value::Array(items)) }
        }
        Ty::Wrapper(elem) => {
            let items = if occ.is_empty() { Vec::new() } else { wrapper(elem, &concat(occ)?, ctx)? };
            if items.is_empty() { nil() } else { Some(Value::Array(items)) }
        }
        Ty::Map(val) => {
            let mut map = Map::new();
            for v in occ {
                let (k, v) = entry(val, bytes(*v)?, ctx)?;
                map.insert(k, v);
            }
            if map.is_empty() { nil() } else { Some(Value::Object(map)) }
        }
        Ty::Bytes => match occ.last() {
            None => nil(),
            Some(v) => {
                let b = bytes(*v)?;
                if b.is_empty() && f.omitempty { None } else { Some(Value::String(gofmt::base64(b))) }
            }
        },
        Ty::Struct(i) => Some(structure(*i, &concat(occ)?, ctx)?),
        scalar_ty => {
            let v = match occ.last() {
                Some(v) => scalar(scalar_ty, *v)?,
                None => zero(scalar_ty),
            };
            if f.omitempty && is_zero(&v) { None } else { Some(v) }
        }
    })
}

/// The value behind a pointer that is set.
fn present(f: &Field, ty: &Ty, occ: &[Wire], ctx: &mut Ctx) -> Result<Value, DecodeError> {
    Ok(match ty {
        Ty::Struct(i) => structure(*i, &concat(occ)?, ctx)?,
        Ty::Bytes => Value::String(gofmt::base64(bytes(*occ.last().unwrap())?)),
        // A pointer to a slice or map (none in kubectl 1.33's types, but cheap to get right) is
        // written like the slice or map itself.
        Ty::Slice(_) | Ty::Wrapper(_) | Ty::Map(_) | Ty::Ptr(_) => {
            let plain = Field { tag: f.tag, name: Name::Skip, omitempty: false, ty: ty.clone() };
            field(&plain, ty, occ, ctx)?.unwrap_or(Value::Null)
        }
        scalar_ty => scalar(scalar_ty, *occ.last().unwrap())?,
    })
}

/// Protobuf merges repeated occurrences of a message field; concatenating them is exactly that.
fn concat<'a>(occ: &[Wire<'a>]) -> Result<Cow<'a, [u8]>, DecodeError> {
    match occ {
        [] => Ok(Cow::Borrowed(&[])),
        [one] => Ok(Cow::Borrowed(bytes(*one)?)),
        many => {
            let mut all = Vec::new();
            for v in many {
                all.extend_from_slice(bytes(*v)?);
            }
            Ok(Cow::Owned(all))
        }
    }
}

fn bytes<'a>(v: Wire<'a>) -> Result<&'a [u8], DecodeError> {
    match v {
        Wire::Bytes(b) => Ok(b),
        other => Err(wrong_wire(other, 2)),
    }
}

fn wrong_wire(v: Wire, want: u8) -> DecodeError {
    wire::malformed(&format!("wire type {} where {want} was expected", v.wire_type()))
}

fn repeated(elem: &Ty, v: Wire, out: &mut Vec<Value>, ctx: &mut Ctx) -> Result<(), DecodeError> {
    ctx.spend()?;
    match elem {
        Ty::Struct(i) => out.push(structure(*i, bytes(v)?, ctx)?),
        Ty::Ptr(inner) => match **inner {
            Ty::Struct(i) => out.push(structure(i, bytes(v)?, ctx)?),
            _ => return Err(wire::malformed("unsupported repeated pointer")),
        },
        Ty::String => out.push(scalar(elem, v)?),
        Ty::Bytes => out.push(Value::String(gofmt::base64(bytes(v)?))),
        Ty::Bool | Ty::Int32 | Ty::Int64 | Ty::Uint32 | Ty::Uint64 | Ty::Int | Ty::Uint | Ty::Float32 | Ty::Float64 => {
            match v {
                // Packed encoding: gogo writes proto2 repeated scalars unpacked but accepts both.
                Wire::Bytes(b) => {
                    let mut r = Reader::new(b);
                    while !r.is_empty() {
                        let item = match elem {
                            Ty::Float64 => Wire::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().unwrap())),
                            Ty::Float32 => Wire::Fixed32(u32::from_le_bytes(r.take(4)?.try_into().unwrap())),
                            _ => Wire::Varint(r.varint()?),
                        };
                        ctx.spend()?;
                        out.push(scalar(elem, item)?);
                    }
                }
                _ => out.push(scalar(elem, v)?),
            }
        }
        Ty::Slice(_) | Ty::Wrapper(_) | Ty::Map(_) => return Err(wire::malformed("unsupported nested repeated type")),
    }
    Ok(())
}

/// Items of a named-slice wrapper message `{repeated items = 1}`.
fn wrapper(elem: &Ty, msg: &[u8], ctx: &mut Ctx) -> Result<Vec<Value>, DecodeError> {
    let mut items = Vec::new();
    let mut r = Reader::new(msg);
    while let Some((num, v)) = r.field()? {
        if num == 1 {
            repeated(elem, v, &mut items, ctx)?;
        }
    }
    Ok(items)
}

/// A map entry message `{1: key, 2: value}`; missing parts are Go's zero values.
fn entry(val: &Ty, msg: &[u8], ctx: &mut Ctx) -> Result<(String, Value), DecodeError> {
    let (mut key, mut value) = (None, None);
    let mut r = Reader::new(msg);
    while let Some((num, v)) = r.field()? {
        match num {
            1 => key = Some(v),
            2 => value = Some(v),
            _ => {}
        }
    }
    let key = match key {
        Some(k) => String::from_utf8_lossy(bytes(k)?).into_owned(),
        None => String::new(),
    };
    ctx.spend()?;
    let value = match (val, value) {
        (Ty::Struct(i), v) => structure(*i, v.map(bytes).transpose()?.unwrap_or(&[]), ctx)?,
        (Ty::Ptr(inner), Some(v)) => match **inner {
            Ty::Struct(i) => structure(i, bytes(v)?, ctx)?,
            _ => scalar(inner, v)?,
        },
        (Ty::Ptr(_), None) => Value::Null,
        (Ty::Wrapper(elem), v) => Value::Array(match v {
            Some(v) => wrapper(elem, bytes(v)?, ctx)?,
            None => Vec::new(),
        }),
        (Ty::Bytes, v) => Value::String(gofmt::base64(v.map(bytes).transpose()?.unwrap_or(&[]))),
        (Ty::Slice(_) | Ty::Map(_), _) => return Err(wire::malformed("unsupported map value type")),
        (scalar_ty, Some(v)) => scalar(scalar_ty, v)?,
        (scalar_ty, None) => zero(scalar_ty),
    };
    Ok((key, value))
}

/// A struct value, with the hand-written JSON of the types Go marshals specially.
fn structure(idx: usize, msg: &[u8], ctx: &mut Ctx) -> Result<Value, DecodeError> {
    let name = Table::get().structs[idx].name.as_str();
    Ok(match name {
        table::TIME | table::MICRO_TIME => {
            // metav1.Time.Unmarshal: an empty message is the zero time (JSON null), otherwise
            // time.Unix(seconds, 0) (Time keeps only seconds; MicroTime keeps the nanos).
            if msg.is_empty() {
                return Ok(Value::Null);
            }
            let (mut secs, mut nanos) = (0i64, 0i64);
            let mut r = Reader::new(msg);
            while let Some((num, v)) = r.field()? {
                match (num, v) {
                    (1, Wire::Varint(s)) => secs = s as i64,
                    (2, Wire::Varint(n)) => nanos = i64::from(n as i32),
                    (1 | 2, other) => return Err(wrong_wire(other, 0)),
                    _ => {}
                }
            }
            let micro = name == table::MICRO_TIME;
            if !micro {
                nanos = 0;
            }
            // time.Unix can land exactly on Go's zero time, which marshals as null too.
            const GO_ZERO_TIME: i64 = -62_135_596_800;
            if secs.checked_add(nanos.div_euclid(1_000_000_000)) == Some(GO_ZERO_TIME)
                && nanos.rem_euclid(1_000_000_000) == 0
            {
                return Ok(Value::Null);
            }
            Value::String(
                gofmt::rfc3339(secs, nanos, micro).ok_or_else(|| wire::malformed("time outside years 0-9999"))?,
            )
        }
        table::DURATION => {
            let mut nanos = 0i64;
            let mut r = Reader::new(msg);
            while let Some((num, v)) = r.field()? {
                match (num, v) {
                    (1, Wire::Varint(n)) => nanos = n as i64,
                    (1, other) => return Err(wrong_wire(other, 0)),
                    _ => {}
                }
            }
            Value::String(gofmt::duration(nanos))
        }
        table::QUANTITY => {
            // The wire carries Quantity.String() of a parsed quantity, i.e. already canonical
            // when a Go client wrote it; the zero Quantity writes "0".
            let mut s = String::new();
            let mut r = Reader::new(msg);
            while let Some((num, v)) = r.field()? {
                if num == 1 {
                    s = String::from_utf8_lossy(bytes(v)?).into_owned();
                }
            }
            Value::String(if s.is_empty() { "0".to_string() } else { s })
        }
        table::INT_OR_STRING => {
            let (mut kind, mut int, mut string) = (0i64, 0i32, String::new());
            let mut r = Reader::new(msg);
            while let Some((num, v)) = r.field()? {
                match (num, v) {
                    (1, Wire::Varint(t)) => kind = t as i64,
                    (2, Wire::Varint(i)) => int = i as i32,
                    (3, Wire::Bytes(s)) => string = String::from_utf8_lossy(s).into_owned(),
                    (1 | 2, other) => return Err(wrong_wire(other, 0)),
                    (3, other) => return Err(wrong_wire(other, 2)),
                    _ => {}
                }
            }
            match kind {
                0 => Value::from(int),
                1 => Value::String(string),
                // Go's IntOrString.MarshalJSON fails the same way.
                _ => return Err(wire::malformed("impossible IntOrString.Type")),
            }
        }
        table::RAW_EXTENSION | table::FIELDS_V1 => {
            let mut raw: Option<&[u8]> = None;
            let mut r = Reader::new(msg);
            while let Some((num, v)) = r.field()? {
                if num == 1 {
                    raw = Some(bytes(v)?);
                }
            }
            match raw {
                None | Some([]) => Value::Null,
                Some(raw) if raw.starts_with(crate::MAGIC) => {
                    // An embedded object a protobuf client wrote in its own encoding.
                    ctx.depth += 1;
                    if ctx.depth > MAX_DEPTH {
                        return Err(wire::malformed("nesting too deep"));
                    }
                    let v = crate::decode_envelope(raw, ctx)?;
                    ctx.depth -= 1;
                    v
                }
                Some(raw) => serde_json::from_slice(raw)
                    .map_err(|e| wire::malformed(&format!("embedded raw object is not JSON: {e}")))?,
            }
        }
        _ => Value::Object(message(idx, msg, ctx)?),
    })
}

fn scalar(ty: &Ty, v: Wire) -> Result<Value, DecodeError> {
    let expect = match ty {
        Ty::String => 2,
        Ty::Float64 => 1,
        Ty::Float32 => 5,
        _ => 0,
    };
    if v.wire_type() != expect {
        return Err(wrong_wire(v, expect));
    }
    Ok(match (ty, v) {
        // Go's string(bytes) keeps invalid UTF-8 and encoding/json turns it into U+FFFD.
        (Ty::String, Wire::Bytes(b)) => Value::String(String::from_utf8_lossy(b).into_owned()),
        (Ty::Bool, Wire::Varint(n)) => Value::Bool(n != 0),
        // Narrowing as gogo's generated code does (it shifts bits into the target type).
        (Ty::Int32, Wire::Varint(n)) => Value::from(n as i32),
        (Ty::Uint32, Wire::Varint(n)) => Value::from(n as u32),
        (Ty::Int64 | Ty::Int, Wire::Varint(n)) => Value::from(n as i64),
        (Ty::Uint64 | Ty::Uint, Wire::Varint(n)) => Value::from(n),
        (Ty::Float64, Wire::Fixed64(b)) => float(f64::from_bits(b))?,
        // Go formats a float32 with 32-bit precision (0.1, not 0.10000000149011612).
        (Ty::Float32, Wire::Fixed32(b)) => float(f32::from_bits(b).to_string().parse::<f64>().unwrap_or(f64::NAN))?,
        _ => return Err(wire::malformed("unsupported scalar")),
    })
}

fn float(f: f64) -> Result<Value, DecodeError> {
    // encoding/json refuses NaN and infinities too.
    Number::from_f64(f).map(Value::Number).ok_or_else(|| wire::malformed("NaN or infinite number"))
}

fn zero(ty: &Ty) -> Value {
    match ty {
        Ty::String => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        Ty::Float32 | Ty::Float64 => Value::from(0.0),
        _ => Value::from(0),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null => true,
        _ => false,
    }
}
