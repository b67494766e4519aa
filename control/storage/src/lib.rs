//! Storage for the API server: a key-value store with a global, monotonically increasing revision.
//!
//! The revision is what Kubernetes calls `resourceVersion`. Two backends implement [`Store`] with
//! identical observable behaviour: [`embedded`] (redb, the default) and [`etcd`].
//!
//! Architecture invariant: this crate knows nothing about Kubernetes objects. Keys are strings
//! (`/registry/<resource>/<namespace>/<name>` by convention of the caller), values are opaque bytes.

use futures::stream::BoxStream;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
pub mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

pub type Revision = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put`: the new value. For `Delete`: the key with the deleted value and
    /// `mod_revision` set to the revision of the deletion.
    pub kv: KeyValue,
    /// The value before this change, if there was one.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// Compare-and-swap failed: the key's current state is returned (None if it no longer exists).
    #[error("key {key} was modified concurrently")]
    Conflict { key: String, current: Option<KeyValue> },
    /// The requested revision is older than the compacted revision.
    #[error("required revision {requested} has been compacted (compacted at {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// The requested revision is newer than anything the store has.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("storage backend: {0}")]
    Backend(#[from] anyhow::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The contract both backends fulfil. Every successful write returns its new revision, which is
/// strictly greater than every revision returned before it.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The latest revision the store has committed.
    async fn current_revision(&self) -> Result<Revision>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// All keys starting with `prefix`, sorted by key, as of `revision` (`None` = latest).
    /// Returns the items and the revision the list reflects.
    ///
    /// As in etcd, `Some(r)` with `r <= 0` also means latest. `Compacted` if `r` is below the
    /// compacted revision (listing *at* the compacted revision works), `FutureRevision` if `r` is
    /// above the current revision.
    async fn list(&self, prefix: &str, revision: Option<Revision>) -> Result<(Vec<KeyValue>, Revision)>;

    /// Fails with `AlreadyExists` if the key exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision>;

    /// Compare-and-swap on `mod_revision`: fails with `Conflict` if the key's mod_revision is not
    /// `expected`, `NotFound` if the key does not exist.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision>;

    /// Deletes the key, optionally only if its mod_revision is `expected`. Returns the deletion's
    /// revision and the deleted value.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Every change to keys under `prefix` with revision > `after`, in order, then live changes.
    /// Fails with `Compacted` if `after` is older than the compacted revision. An `after` beyond
    /// the current revision is allowed (the stream waits for it, as etcd does). The stream never
    /// ends by itself while the store is alive: an `Err` item is terminal and is followed by the
    /// end of the stream (the caller re-lists and re-watches, like a Kubernetes reflector).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<BoxStream<'static, Result<Event>>>;

    /// Discards history at and below `revision`; lists and watches at older revisions fail afterwards.
    /// Compacting to a revision at or below the current compacted revision is a no-op; a revision
    /// above the current one fails with `FutureRevision`.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The revision history was compacted to (0 if never).
    async fn compacted_revision(&self) -> Result<Revision>;
}
