//! Reads the Kubernetes API types out of a kubectl binary's Go runtime type metadata and renders
//! them as the table in `data/`.
//!
//! Why a Go binary and not the `.proto` files or k8s-pb: Kubernetes' protobuf schema cannot tell
//! apart the two things that decide the JSON form of a decoded object. gogo-protobuf writes every
//! *non-pointer* scalar field even when it is zero (`generateName: ""`, `generation: 0`), and writes
//! a *pointer* field only when it is set (`replicas: 0` is meaningful). Go's `encoding/json` then
//! drops the first kind when the tag says `omitempty` and keeps the second. Both are `optional` in
//! the `.proto` files; only the Go types know which is which, and the Go types also carry the JSON
//! names, `omitempty`, `,inline` embedding (`Volume` inlines `VolumeSource`) and the protobuf tag
//! numbers. kubectl 1.33 is the client we must agree with and it is installed on every machine of
//! this project, so its own type metadata is the authoritative and version-matched source.
//!
//! The layout read here is Go 1.24's `internal/abi` (kubectl 1.33 is built with go1.24.2). Anything
//! unexpected is an error rather than a guess, so a future kubectl built differently fails the
//! drift test loudly instead of producing a subtly wrong table.

use std::collections::{BTreeMap, BTreeSet};

const KIND_BOOL: u8 = 1;
const KIND_INT: u8 = 2;
const KIND_INT32: u8 = 5;
const KIND_INT64: u8 = 6;
const KIND_UINT: u8 = 7;
const KIND_UINT8: u8 = 8;
const KIND_UINT32: u8 = 10;
const KIND_UINT64: u8 = 11;
const KIND_FLOAT32: u8 = 13;
const KIND_FLOAT64: u8 = 14;
const KIND_MAP: u8 = 21;
const KIND_POINTER: u8 = 22;
const KIND_SLICE: u8 = 23;
const KIND_STRING: u8 = 24;
const KIND_STRUCT: u8 = 25;

const TFLAG_UNCOMMON: u8 = 1;
const TFLAG_EXTRA_STAR: u8 = 2;
const TFLAG_NAMED: u8 = 4;

/// Size of `abi.Type` on 64-bit targets.
const TYPE_SIZE: u64 = 48;

struct Section {
    addr: u64,
    off: u64,
    size: u64,
}

struct Binary<'a> {
    data: &'a [u8],
    sections: BTreeMap<String, Section>,
    /// `moduledata.types`: base of the `NameOff`s stored in type descriptors.
    types: u64,
}

type R<T> = Result<T, String>;

impl<'a> Binary<'a> {
    fn parse(data: &'a [u8]) -> R<Self> {
        if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        let rd16 = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
        let rd32 = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
        let rd64 = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
        let shoff = rd64(0x28) as usize;
        let (shentsize, shnum, shstrndx) = (rd16(0x3a), rd16(0x3c), rd16(0x3e));
        let header = |i: usize| shoff + i * shentsize;
        let strtab = rd64(header(shstrndx) + 0x18) as usize;
        let mut sections = BTreeMap::new();
        for i in 0..shnum {
            let h = header(i);
            let name_off = strtab + rd32(h) as usize;
            let end = data[name_off..].iter().position(|&b| b == 0).ok_or("bad section name")?;
            let name = String::from_utf8_lossy(&data[name_off..name_off + end]).into_owned();
            let sh_type = rd32(h + 4);
            if sh_type == 8 {
                continue; // NOBITS (.bss): nothing in the file
            }
            sections.insert(name, Section { addr: rd64(h + 0x10), off: rd64(h + 0x18), size: rd64(h + 0x20) });
        }
        let mut bin = Binary { data, sections, types: 0 };
        // moduledata is the only data word that points at the start of .gopclntab (its pcHeader).
        let pcln = bin.section(".gopclntab")?.addr;
        let nd = bin.section(".noptrdata")?;
        let (nd_off, nd_size, nd_addr) = (nd.off as usize, nd.size as usize, nd.addr);
        let mut found = None;
        for o in (0..nd_size.saturating_sub(8)).step_by(8) {
            if rd64(nd_off + o) == pcln {
                found = Some(nd_addr + o as u64);
                break;
            }
        }
        let md = found.ok_or("moduledata not found")?;
        // Go 1.24 moduledata: `types` is the 38th word (after pcHeader, 5 slices, ftab, findfunctab,
        // minpc..enoptrbss, covctrs, end/gcdata/gcbss).
        let types = bin.u64(md + 296)?;
        let etypes = bin.u64(md + 304)?;
        let ro = bin.section(".rodata")?;
        if !(ro.addr <= types && types < etypes && etypes <= ro.addr + ro.size) {
            return Err(format!("moduledata layout not Go 1.24's (types {types:#x}, etypes {etypes:#x})"));
        }
        bin.types = types;
        Ok(bin)
    }

    fn section(&self, name: &str) -> R<&Section> {
        self.sections.get(name).ok_or_else(|| format!("no {name} section"))
    }

    fn offset(&self, addr: u64, len: u64) -> R<usize> {
        for s in self.sections.values() {
            if s.addr != 0 && s.addr <= addr && addr + len <= s.addr + s.size {
                return Ok((addr - s.addr + s.off) as usize);
            }
        }
        Err(format!("address {addr:#x} not in the file"))
    }

    fn bytes(&self, addr: u64, len: u64) -> R<&'a [u8]> {
        let o = self.offset(addr, len)?;
        Ok(&self.data[o..o + len as usize])
    }

    fn u64(&self, addr: u64) -> R<u64> {
        Ok(u64::from_le_bytes(self.bytes(addr, 8)?.try_into().unwrap()))
    }

    fn i32(&self, addr: u64) -> R<i32> {
        Ok(i32::from_le_bytes(self.bytes(addr, 4)?.try_into().unwrap()))
    }

    /// An `abi.Name`: flags byte, varint length, bytes, then (if flag bit 1) varint tag length
    /// and tag bytes.
    fn name(&self, addr: u64) -> R<GoName> {
        let o = self.offset(addr, 1)?;
        let d = self.data;
        let flags = d[o];
        let mut p = o + 1;
        let varint = |p: &mut usize| -> usize {
            let (mut v, mut shift) = (0usize, 0);
            loop {
                let b = d[*p];
                *p += 1;
                v |= ((b & 0x7f) as usize) << shift;
                shift += 7;
                if b < 0x80 {
                    return v;
                }
            }
        };
        let n = varint(&mut p);
        let name = String::from_utf8_lossy(&d[p..p + n]).into_owned();
        p += n;
        let mut tag = String::new();
        if flags & 2 != 0 {
            let t = varint(&mut p);
            tag = String::from_utf8_lossy(&d[p..p + t]).into_owned();
        }
        Ok(GoName { name, tag, embedded: flags & 8 != 0 })
    }

    fn ty(&self, addr: u64) -> R<GoType> {
        let b = self.bytes(addr, TYPE_SIZE)?;
        let tflag = b[20];
        let kind = b[23] & 31;
        let str_off = i32::from_le_bytes(b[40..44].try_into().unwrap());
        let mut s = self.name((self.types as i64 + str_off as i64) as u64)?.name;
        if tflag & TFLAG_EXTRA_STAR != 0 {
            s.remove(0);
        }
        Ok(GoType { addr, tflag, kind, string: s })
    }

    /// `abi.PtrType.Elem` / `abi.SliceType.Elem`, and `abi.MapType.Key`.
    fn elem(&self, t: &GoType) -> R<GoType> {
        self.ty(self.u64(t.addr + TYPE_SIZE)?)
    }

    fn map_value(&self, t: &GoType) -> R<GoType> {
        self.ty(self.u64(t.addr + TYPE_SIZE + 8)?)
    }

    /// Full name of a named struct: package path from its uncommon type + the type name.
    fn struct_name(&self, t: &GoType) -> R<String> {
        if t.tflag & TFLAG_UNCOMMON == 0 || t.tflag & TFLAG_NAMED == 0 {
            return Err(format!("anonymous struct type {}", t.string));
        }
        // abi.StructType = Type + PkgPath Name + Fields slice (3 words); UncommonType follows.
        let pkg_off = self.i32(t.addr + TYPE_SIZE + 32)?;
        let pkg = self.name((self.types as i64 + pkg_off as i64) as u64)?.name;
        let short = t.string.split_once('.').map(|(_, n)| n).unwrap_or(&t.string);
        Ok(format!("{pkg}.{short}"))
    }

    fn struct_fields(&self, t: &GoType) -> R<Vec<(GoName, GoType)>> {
        let (ptr, len) = (self.u64(t.addr + TYPE_SIZE + 8)?, self.u64(t.addr + TYPE_SIZE + 16)?);
        let mut out = Vec::new();
        for i in 0..len {
            let f = ptr + 24 * i;
            out.push((self.name(self.u64(f)?)?, self.ty(self.u64(f + 8)?)?));
        }
        Ok(out)
    }
}

struct GoName {
    name: String,
    tag: String,
    embedded: bool,
}

#[derive(Clone)]
struct GoType {
    addr: u64,
    tflag: u8,
    kind: u8,
    string: String,
}

/// Value of `key:"..."` in a Go struct tag.
fn tag_value<'t>(tag: &'t str, key: &str) -> Option<&'t str> {
    let mut rest = tag;
    while let Some(i) = rest.find(':') {
        let k = rest[..i].trim();
        let after = &rest[i + 1..];
        let after = after.strip_prefix('"')?;
        let end = after.find('"')?;
        if k == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// Walks every struct type in the binary's type section and renders the table text.
pub(crate) fn table_from_binary(data: &[u8], source: &str) -> R<String> {
    let bin = Binary::parse(data)?;
    let ro = bin.section(".rodata")?;
    let (lo, hi) = (ro.addr, ro.addr + ro.size);
    // Candidate struct descriptors: kind Struct, a fields slice inside .rodata with len == cap.
    // Descriptors are 8-byte aligned; a false candidate fails the name or field checks below.
    let mut structs: BTreeMap<String, GoType> = BTreeMap::new();
    let ro_bytes = bin.bytes(ro.addr, ro.size)?;
    let word = |o: usize| u64::from_le_bytes(ro_bytes[o..o + 8].try_into().unwrap());
    let mut o = 0usize;
    while o + 80 <= ro_bytes.len() {
        let here = o;
        o += 8;
        if ro_bytes[here + 23] & 31 != KIND_STRUCT || ro_bytes[here + 20] & TFLAG_NAMED == 0 {
            continue;
        }
        let (fp, fl, fc) = (word(here + 56), word(here + 64), word(here + 72));
        if !(lo <= fp && fp < hi && fl == fc && fl > 0 && fl < 400) {
            continue;
        }
        let Ok(t) = bin.ty(ro.addr + here as u64) else { continue };
        let Ok(name) = bin.struct_name(&t) else { continue };
        if !name.starts_with("k8s.io/") || structs.contains_key(&name) {
            continue;
        }
        let Ok(fields) = bin.struct_fields(&t) else { continue };
        // Internal (unversioned) types embed TypeMeta too, but have no protobuf tags.
        if fields.iter().any(|(n, _)| tag_value(&n.tag, "protobuf").is_some()) {
            structs.insert(name, t);
        }
    }
    if !structs.contains_key("k8s.io/api/core/v1.Pod") {
        return Err("no k8s.io/api/core/v1.Pod in the binary: not a kubectl?".into());
    }

    // Types with hand-written Go marshalling are rendered by the decoder, not described here.
    let special: BTreeSet<&str> = crate::table::SPECIAL_TYPES.iter().copied().collect();
    let mut out = String::new();
    out.push_str(
        "# Kubernetes API types as Go declares them, for decoding protobuf bodies to the JSON Go would write.\n",
    );
    out.push_str(&format!("# Generated from {source} by `SKIFF_REGEN_TYPES=1 cargo test -p skiff-protobuf table_matches_kubectl`; do not edit.\n"));
    out.push_str(
        "# `T|S <pkg>.<Name>` starts a kind (embeds TypeMeta) or another struct; then one line per protobuf field:\n",
    );
    out.push_str("# <tag> <json name | ~ inline | - not in JSON> <o omitempty | . > <type>, where type is a scalar (bool string\n");
    out.push_str("# int32 int64 uint32 uint64 int uint float32 float64 bytes), *T pointer, []T repeated, [w]T named-slice wrapper\n");
    out.push_str(
        "# message {repeated T items = 1}, map[string]T, or @[pkg.]Name a struct (same package when no pkg).\n",
    );
    // Structs referenced by fields but without protobuf-tagged fields of their own (empty
    // structs such as apiserverinternal's StorageVersionSpec) are found while rendering, and
    // rendered in turn.
    let mut referenced: BTreeMap<String, GoType> = BTreeMap::new();
    let mut rendered: BTreeMap<String, String> = BTreeMap::new();
    let mut todo: Vec<(String, GoType)> = structs.into_iter().collect();
    while let Some((name, t)) = todo.pop() {
        if special.contains(name.as_str()) || rendered.contains_key(&name) {
            continue;
        }
        let fields = bin.struct_fields(&t)?;
        let mut is_kind = false;
        for (n, ft) in &fields {
            if n.embedded && n.name == "TypeMeta" && tag_value(&n.tag, "protobuf").is_none() {
                is_kind |= bin.struct_name(ft)? == "k8s.io/apimachinery/pkg/apis/meta/v1.TypeMeta";
            }
        }
        let pkg = &name[..name.rfind('.').unwrap()];
        let mut text = format!("{} {name}\n", if is_kind { 'T' } else { 'S' });
        let mut tagged = 0;
        for (n, ft) in &fields {
            let Some(pb) = tag_value(&n.tag, "protobuf") else { continue };
            tagged += 1;
            let mut parts = pb.split(',');
            // The wire type written in the tag (`varint`, `bytes`) is not used: go-to-protobuf
            // derives the schema from the Go type, and some hand-written tags disagree with it
            // (authorization/v1 SubjectRulesReviewStatus.incomplete says "bytes" for a bool,
            // apps/v1 RollingUpdateStatefulSetStrategy.maxUnavailable "varint" for an IntOrString).
            let _wire = parts.next();
            let num: u32 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{name}.{}: bad protobuf tag {pb:?}", n.name))?;
            let json = tag_value(&n.tag, "json").unwrap_or("");
            let mut jparts = json.split(',');
            let jname = jparts.next().unwrap_or("");
            let mut omitempty = false;
            for opt in jparts {
                match opt {
                    "omitempty" => omitempty = true,
                    "inline" => {}
                    other => {
                        return Err(format!("{name}.{}: json option {other:?} not handled by the decoder", n.name));
                    }
                }
            }
            let jname = match jname {
                "-" => "-".to_string(),
                "" if n.embedded => "~".to_string(),
                "" => n.name.clone(),
                j => j.to_string(),
            };
            if jname == "~" && ft.kind != KIND_STRUCT {
                return Err(format!("{name}.{}: inline field of kind {}", n.name, ft.kind));
            }
            let ty = render_type(&bin, ft, pkg, &mut referenced)?;
            text.push_str(&format!("{num} {jname} {} {ty}\n", if omitempty { 'o' } else { '.' }));
        }
        if tagged == 0 && fields.iter().any(|(n, _)| !(n.embedded && n.name == "TypeMeta")) {
            return Err(format!("struct {name} has fields but none for protobuf"));
        }
        rendered.insert(name, text);
        for (r, rt) in std::mem::take(&mut referenced) {
            if !rendered.contains_key(&r) {
                todo.push((r, rt));
            }
        }
    }
    for text in rendered.values() {
        out.push_str(text);
    }
    Ok(out)
}

fn render_type(bin: &Binary, t: &GoType, pkg: &str, refs: &mut BTreeMap<String, GoType>) -> R<String> {
    Ok(match t.kind {
        KIND_BOOL => "bool".into(),
        KIND_INT => "int".into(),
        KIND_INT32 => "int32".into(),
        KIND_INT64 => "int64".into(),
        KIND_UINT => "uint".into(),
        KIND_UINT32 => "uint32".into(),
        KIND_UINT64 => "uint64".into(),
        KIND_FLOAT32 => "float32".into(),
        KIND_FLOAT64 => "float64".into(),
        KIND_STRING => "string".into(),
        KIND_POINTER => format!("*{}", render_type(bin, &bin.elem(t)?, pkg, refs)?),
        KIND_SLICE => {
            let e = bin.elem(t)?;
            if e.kind == KIND_UINT8 {
                "bytes".into()
            } else if t.tflag & TFLAG_NAMED != 0 {
                // A named slice (metav1.Verbs, ExtraValue) is a `+protobuf.nullable=true` wrapper
                // message `{repeated items = 1}` on the wire, a plain array in JSON.
                format!("[w]{}", render_type(bin, &e, pkg, refs)?)
            } else {
                format!("[]{}", render_type(bin, &e, pkg, refs)?)
            }
        }
        KIND_MAP => {
            let k = bin.elem(t)?;
            if k.kind != KIND_STRING {
                return Err(format!("map key {} is not a string", k.string));
            }
            let v = bin.map_value(t)?;
            let vs = if v.kind == KIND_SLICE && bin.elem(&v)?.kind != KIND_UINT8 {
                // Map values are always messages on the wire, so a slice value is a wrapper.
                format!("[w]{}", render_type(bin, &bin.elem(&v)?, pkg, refs)?)
            } else {
                render_type(bin, &v, pkg, refs)?
            };
            format!("map[string]{vs}")
        }
        KIND_STRUCT => {
            let full = bin.struct_name(t)?;
            refs.insert(full.clone(), t.clone());
            match full.strip_prefix(pkg).and_then(|r| r.strip_prefix('.')) {
                Some(short) if !short.contains('.') => format!("@{short}"),
                _ => format!("@{full}"),
            }
        }
        k => return Err(format!("unsupported Go kind {k} ({})", t.string)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubectl the project tests against; the table is regenerated from it.
    const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
    const TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/kubectl-1.33-types.txt");

    #[test]
    fn tag_values() {
        let t = r#"json:"minReplicas,omitempty" protobuf:"varint,2,opt,name=minReplicas""#;
        assert_eq!(tag_value(t, "json"), Some("minReplicas,omitempty"));
        assert_eq!(tag_value(t, "protobuf"), Some("varint,2,opt,name=minReplicas"));
        assert_eq!(tag_value(t, "yaml"), None);
    }

    /// The committed table must be what the installed kubectl 1.33 declares; with
    /// `SKIFF_REGEN_TYPES=1` the table is rewritten instead. Skipped (with a note) where that
    /// kubectl is not installed.
    #[test]
    fn table_matches_kubectl() {
        let Ok(bin) = std::fs::read(KUBECTL) else {
            eprintln!("skipping: {KUBECTL} not installed");
            return;
        };
        let table = table_from_binary(&bin, "kubectl 1.33").expect("extract");
        if std::env::var_os("SKIFF_REGEN_TYPES").is_some() {
            std::fs::write(TABLE, &table).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(TABLE).unwrap();
        assert!(
            committed == table,
            "data/kubectl-1.33-types.txt differs from {KUBECTL}; regenerate with SKIFF_REGEN_TYPES=1"
        );
    }
}
