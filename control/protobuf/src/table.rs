//! The type table: every Kubernetes API struct kubectl 1.33 knows, with its protobuf fields as Go
//! declares them (see `extract.rs` for where it comes from and why).

use std::collections::HashMap;
use std::sync::OnceLock;

/// Go types with hand-written protobuf and JSON marshalling; `decode.rs` renders them.
pub(crate) const TIME: &str = "k8s.io/apimachinery/pkg/apis/meta/v1.Time";
pub(crate) const MICRO_TIME: &str = "k8s.io/apimachinery/pkg/apis/meta/v1.MicroTime";
pub(crate) const DURATION: &str = "k8s.io/apimachinery/pkg/apis/meta/v1.Duration";
pub(crate) const FIELDS_V1: &str = "k8s.io/apimachinery/pkg/apis/meta/v1.FieldsV1";
pub(crate) const QUANTITY: &str = "k8s.io/apimachinery/pkg/api/resource.Quantity";
pub(crate) const INT_OR_STRING: &str = "k8s.io/apimachinery/pkg/util/intstr.IntOrString";
pub(crate) const RAW_EXTENSION: &str = "k8s.io/apimachinery/pkg/runtime.RawExtension";
pub(crate) const SPECIAL_TYPES: &[&str] =
    &[TIME, MICRO_TIME, DURATION, FIELDS_V1, QUANTITY, INT_OR_STRING, RAW_EXTENSION];

const TABLE_TEXT: &str = include_str!("../data/kubectl-1.33-types.txt");

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ty {
    Bool,
    String,
    Int32,
    Int64,
    Uint32,
    Uint64,
    /// Go `int`/`uint`: varint on the wire, a JSON number.
    Int,
    Uint,
    Float32,
    Float64,
    /// `[]byte`: length-delimited on the wire, base64 in JSON.
    Bytes,
    Ptr(Box<Ty>),
    /// A repeated field.
    Slice(Box<Ty>),
    /// A named slice (`metav1.Verbs`, `ExtraValue`): a message `{repeated items = 1}` on the wire.
    Wrapper(Box<Ty>),
    /// Keys are always strings in the Kubernetes API.
    Map(Box<Ty>),
    /// Index into `Table::structs`.
    Struct(usize),
}

#[derive(Debug)]
pub(crate) enum Name {
    Json(String),
    /// An embedded struct whose fields Go's JSON encoder promotes into the parent.
    Inline,
    /// `json:"-"`: decoded, never written.
    Skip,
}

#[derive(Debug)]
pub(crate) struct Field {
    pub tag: u32,
    pub name: Name,
    pub omitempty: bool,
    pub ty: Ty,
}

#[derive(Debug)]
pub(crate) struct Struct {
    pub name: String,
    /// Embeds `metav1.TypeMeta`: an object that can stand alone in an envelope.
    pub is_kind: bool,
    pub fields: Vec<Field>,
}

impl Struct {
    pub fn field(&self, tag: u32) -> Option<usize> {
        // Go declares fields mostly in tag order, and structs are small: a scan is fine.
        self.fields.iter().position(|f| f.tag == tag)
    }
}

pub(crate) struct Table {
    pub structs: Vec<Struct>,
    by_name: HashMap<String, usize>,
}

impl Table {
    pub fn get() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| Table::parse(TABLE_TEXT).expect("data/kubectl-1.33-types.txt is well-formed"))
    }

    pub fn lookup(&self, full_name: &str) -> Option<usize> {
        self.by_name.get(full_name).copied()
    }

    pub fn parse(text: &str) -> Result<Table, String> {
        let mut table = Table { structs: Vec::new(), by_name: HashMap::new() };
        // Struct references are resolved after all names are known: register the names first.
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("T ").or_else(|| line.strip_prefix("S ")) {
                let idx = table.structs.len();
                table.structs.push(Struct {
                    name: name.to_string(),
                    is_kind: line.starts_with('T'),
                    fields: Vec::new(),
                });
                table.by_name.insert(name.to_string(), idx);
            }
        }
        for name in SPECIAL_TYPES {
            let idx = table.structs.len();
            table.structs.push(Struct { name: name.to_string(), is_kind: false, fields: Vec::new() });
            table.by_name.insert(name.to_string(), idx);
        }
        let mut current: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix("T ").or_else(|| line.strip_prefix("S ")) {
                current = Some(table.by_name[name]);
                continue;
            }
            let s = current.ok_or_else(|| err("field before any struct"))?;
            let mut parts = line.split(' ');
            let (Some(tag), Some(name), Some(opts), Some(ty), None) =
                (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(err("expected 4 columns"));
            };
            let pkg = {
                let full = &table.structs[s].name;
                full[..full.rfind('.').unwrap()].to_string()
            };
            let field = Field {
                tag: tag.parse().map_err(|_| err("bad tag"))?,
                name: match name {
                    "~" => Name::Inline,
                    "-" => Name::Skip,
                    j => Name::Json(j.to_string()),
                },
                omitempty: opts == "o",
                ty: table.parse_ty(ty, &pkg).map_err(|e| err(&e))?,
            };
            table.structs[s].fields.push(field);
        }
        Ok(table)
    }

    fn parse_ty(&self, t: &str, pkg: &str) -> Result<Ty, String> {
        Ok(match t {
            "bool" => Ty::Bool,
            "string" => Ty::String,
            "int32" => Ty::Int32,
            "int64" => Ty::Int64,
            "uint32" => Ty::Uint32,
            "uint64" => Ty::Uint64,
            "int" => Ty::Int,
            "uint" => Ty::Uint,
            "float32" => Ty::Float32,
            "float64" => Ty::Float64,
            "bytes" => Ty::Bytes,
            _ => {
                if let Some(r) = t.strip_prefix('*') {
                    Ty::Ptr(Box::new(self.parse_ty(r, pkg)?))
                } else if let Some(r) = t.strip_prefix("[]") {
                    Ty::Slice(Box::new(self.parse_ty(r, pkg)?))
                } else if let Some(r) = t.strip_prefix("[w]") {
                    Ty::Wrapper(Box::new(self.parse_ty(r, pkg)?))
                } else if let Some(r) = t.strip_prefix("map[string]") {
                    Ty::Map(Box::new(self.parse_ty(r, pkg)?))
                } else if let Some(r) = t.strip_prefix('@') {
                    let full = if r.contains('/') { r.to_string() } else { format!("{pkg}.{r}") };
                    Ty::Struct(self.lookup(&full).ok_or_else(|| format!("unknown struct {full}"))?)
                } else {
                    return Err(format!("unknown type {t}"));
                }
            }
        })
    }
}

/// Go package of an API group's types. Listed rather than derived from the group name so that a
/// custom resource group that merely looks similar (`apps.example.com`) is an unknown kind.
pub(crate) fn package_for_group(group: &str) -> Option<&'static str> {
    Some(match group {
        "" => "k8s.io/api/core",
        "admission.k8s.io" => "k8s.io/api/admission",
        "admissionregistration.k8s.io" => "k8s.io/api/admissionregistration",
        "apidiscovery.k8s.io" => "k8s.io/api/apidiscovery",
        "internal.apiserver.k8s.io" => "k8s.io/api/apiserverinternal",
        "apps" => "k8s.io/api/apps",
        "authentication.k8s.io" => "k8s.io/api/authentication",
        "authorization.k8s.io" => "k8s.io/api/authorization",
        "autoscaling" => "k8s.io/api/autoscaling",
        "batch" => "k8s.io/api/batch",
        "certificates.k8s.io" => "k8s.io/api/certificates",
        "coordination.k8s.io" => "k8s.io/api/coordination",
        "discovery.k8s.io" => "k8s.io/api/discovery",
        "events.k8s.io" => "k8s.io/api/events",
        "extensions" => "k8s.io/api/extensions",
        "flowcontrol.apiserver.k8s.io" => "k8s.io/api/flowcontrol",
        "imagepolicy.k8s.io" => "k8s.io/api/imagepolicy",
        "networking.k8s.io" => "k8s.io/api/networking",
        "node.k8s.io" => "k8s.io/api/node",
        "policy" => "k8s.io/api/policy",
        "rbac.authorization.k8s.io" => "k8s.io/api/rbac",
        "resource.k8s.io" => "k8s.io/api/resource",
        "scheduling.k8s.io" => "k8s.io/api/scheduling",
        "storage.k8s.io" => "k8s.io/api/storage",
        "storagemigration.k8s.io" => "k8s.io/api/storagemigration",
        "meta.k8s.io" => "k8s.io/apimachinery/pkg/apis/meta",
        "metrics.k8s.io" => "k8s.io/metrics/pkg/apis/metrics",
        _ => return None,
    })
}

/// The struct for an envelope's `apiVersion`/`kind`, if it is a kind of a built-in group.
pub(crate) fn kind_struct(api_version: &str, kind: &str) -> Option<usize> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if version.is_empty() || version.contains('/') || kind.is_empty() || kind.contains(['.', '/']) {
        return None;
    }
    let table = Table::get();
    let pkg = package_for_group(group)?;
    let own = format!("{pkg}/{version}.{kind}");
    // Every group version also serves meta/v1's option and status kinds (DeleteOptions, Status…),
    // as Kubernetes' `AddToGroupVersion` registers them there.
    let meta = format!("k8s.io/apimachinery/pkg/apis/meta/v1.{kind}");
    [own, meta].iter().filter_map(|n| table.lookup(n)).find(|&i| table.structs[i].is_kind)
}
