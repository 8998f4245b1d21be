//! The store: every object the managers agree on, in memory, with `view` (a consistent
//! read), `update` (a transaction: its changes are proposed through a [`Proposer`] —
//! Raft on a manager — and applied on every manager in log order) and `watch` (a stream
//! of changes, each batch closed by a commit marker).
//!
//! Updates are checked when they are applied, not when they are made: an update of an
//! object whose version changed since it was read is refused, so two leaders-in-a-row
//! or two loops never overwrite each other's changes. Application is deterministic, so
//! every manager ends in the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

use prost::Message;
use shoal_proto::store_action::Kind as ActionKind;
use shoal_proto::store_object::Object;
use shoal_proto::{
    Cluster, Config, Meta, Network, Node, Secret, Service, StoreAction, StoreBatch, StoreObject,
    StoreSnapshot, Task,
};
use tokio::sync::broadcast;

#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    #[error("{kind} {id} already exists")]
    Exists { kind: String, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    #[error("{kind} {id} was changed by someone else (version {expected} is now {actual}): retry")]
    Conflict {
        kind: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} name {name:?} is already in use by {id}")]
    NameInUse {
        kind: String,
        name: String,
        id: String,
    },
    #[error("invalid store change: {0}")]
    Invalid(String),
    #[error("could not commit: {0}")]
    Proposal(String),
    /// Refused before it was proposed: a change the managers must not take in.
    #[error("{what} is {size} bytes, above the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// Refused before it was proposed: the managers' disk is (nearly) full.
    #[error("no space left on device: {0}")]
    NoSpace(String),
}

/// The most one transaction may hold, encoded: its Raft entry must reach every manager
/// in one message (Swarm: 1.5 MiB). Checked before anything is proposed.
pub const MAX_TX_BYTES: usize = 2 << 20;
/// The most one object may hold, encoded (a service holds its spec twice: the current
/// one and the previous; configs, up to Swarm's 1000 KiB, are objects too).
pub const MAX_OBJECT_BYTES: usize = 1280 << 10;
/// How much a loop (orchestrator, scheduler, dispatcher, reaper) puts in one commit
/// before it commits and goes on in the next: 1,000 changes or a quarter of
/// [`MAX_TX_BYTES`], whichever comes first, so that the step a loop is in the middle of
/// (a few objects, each below [`MAX_OBJECT_BYTES`]) always fits. (Swarm's 200 changes,
/// measured with `scripts/bench/scale.sh`: 10,000 tasks RUNNING after 3.0 s instead of
/// 2.25 s, as every commit costs a Raft write and a pass of each loop; with 1,000,
/// 2.2 s, and the byte bound binds first for tasks of more than 512 bytes.)
pub const TX_BATCH_CHANGES: usize = 1000;
pub const TX_BATCH_BYTES: usize = MAX_TX_BYTES / 4;

/// What a kind of object shares: its ID, name and bookkeeping.
pub trait StoreItem: Clone + Send + Sync + 'static {
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn meta(&self) -> Option<&Meta>;
    fn meta_mut(&mut self) -> &mut Meta;
    fn wrap(self) -> Object;
    fn table(t: &Tables) -> &BTreeMap<String, Self>;
    fn table_mut(t: &mut Tables) -> &mut BTreeMap<String, Self>;
    fn version(&self) -> u64 {
        self.meta().map(|m| m.version).unwrap_or(0)
    }
    /// Keeps the tables' secondary indexes in step when an object changes.
    fn reindex(_t: &mut Tables, _old: Option<&Self>, _new: Option<&Self>) {}
}

macro_rules! item {
    ($ty:ty, $kind:literal, $field:ident, $variant:ident, |$s:ident| $name:expr $(, reindex: $reindex:path)?) => {
        impl StoreItem for $ty {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn name(&self) -> &str {
                let $s = self;
                $name
            }
            fn meta(&self) -> Option<&Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut Meta {
                self.meta.get_or_insert_with(Meta::default)
            }
            fn wrap(self) -> Object {
                Object::$variant(self)
            }
            fn table(t: &Tables) -> &BTreeMap<String, Self> {
                &t.$field
            }
            fn table_mut(t: &mut Tables) -> &mut BTreeMap<String, Self> {
                &mut t.$field
            }
            $(
            fn reindex(t: &mut Tables, old: Option<&Self>, new: Option<&Self>) {
                $reindex(t, old, new)
            }
            )?
        }
    };
}

fn ann_name(a: &Option<shoal_proto::Annotations>) -> &str {
    a.as_ref().map(|a| a.name.as_str()).unwrap_or("")
}

item!(Node, "node", nodes, Node, |s| s
    .description
    .as_ref()
    .map(|d| d.hostname.as_str())
    .unwrap_or(""));
item!(Service, "service", services, Service, |s| s
    .spec
    .as_ref()
    .map(|x| ann_name(&x.annotations))
    .unwrap_or(""));
item!(Task, "task", tasks, Task, |s| ann_name(&s.annotations), reindex: TaskIndex::update);
item!(Network, "network", networks, Network, |s| s
    .spec
    .as_ref()
    .map(|x| ann_name(&x.annotations))
    .unwrap_or(""));
item!(Secret, "secret", secrets, Secret, |s| s
    .spec
    .as_ref()
    .map(|x| ann_name(&x.annotations))
    .unwrap_or(""));
item!(Config, "config", configs, Config, |s| s
    .spec
    .as_ref()
    .map(|x| ann_name(&x.annotations))
    .unwrap_or(""));
item!(Cluster, "cluster", clusters, Cluster, |s| s
    .spec
    .as_ref()
    .map(|x| ann_name(&x.annotations))
    .unwrap_or(""));

/// Every table.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Tables {
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    pub networks: BTreeMap<String, Network>,
    pub secrets: BTreeMap<String, Secret>,
    pub configs: BTreeMap<String, Config>,
    pub clusters: BTreeMap<String, Cluster>,
    /// Tasks by service and by node. Change the tables only through the store so that
    /// this stays in step.
    task_index: TaskIndex,
}

/// Task IDs by service and by node: the loops that look at one service's or one node's
/// tasks must not scan every task (a big cluster has tens of thousands).
#[derive(Clone, Default, Debug, PartialEq)]
struct TaskIndex {
    by_service: HashMap<String, BTreeSet<String>>,
    by_node: HashMap<String, BTreeSet<String>>,
}

impl TaskIndex {
    fn update(t: &mut Tables, old: Option<&Task>, new: Option<&Task>) {
        fn unlink(m: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
            if let Some(ids) = m.get_mut(key) {
                ids.remove(id);
                if ids.is_empty() {
                    m.remove(key);
                }
            }
        }
        let ix = &mut t.task_index;
        if let Some(o) = old {
            unlink(&mut ix.by_service, &o.service_id, &o.id);
            unlink(&mut ix.by_node, &o.node_id, &o.id);
        }
        if let Some(n) = new {
            ix.by_service
                .entry(n.service_id.clone())
                .or_default()
                .insert(n.id.clone());
            if !n.node_id.is_empty() {
                ix.by_node
                    .entry(n.node_id.clone())
                    .or_default()
                    .insert(n.id.clone());
            }
        }
    }
}

/// Kinds whose names must be unique (tasks and nodes may share names).
fn unique_names(kind: &str) -> bool {
    matches!(kind, "service" | "network" | "secret" | "config")
}

impl Tables {
    /// Puts or removes (`None`) an object, keeping the indexes in step; returns the
    /// previous value.
    fn set<T: StoreItem>(&mut self, id: &str, new: Option<T>) -> Option<T> {
        let old = match &new {
            Some(x) => T::table_mut(self).insert(id.to_string(), x.clone()),
            None => T::table_mut(self).remove(id),
        };
        T::reindex(self, old.as_ref(), new.as_ref());
        old
    }

    /// A service's tasks, in ID order.
    pub fn tasks_of_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> {
        self.indexed(self.task_index.by_service.get(service_id))
    }

    /// The tasks assigned to a node, in ID order.
    pub fn tasks_on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> {
        self.indexed(self.task_index.by_node.get(node_id))
    }

    fn indexed<'a>(&'a self, ids: Option<&'a BTreeSet<String>>) -> impl Iterator<Item = &'a Task> {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    fn apply_item<T: StoreItem>(
        &mut self,
        kind: ActionKind,
        mut item: T,
        index: u64,
        now_ms: i64,
    ) -> Result<(Option<Object>, Object), StoreError> {
        let id = item.id().to_string();
        if id.is_empty() {
            return Err(StoreError::Invalid(format!("{} with an empty ID", T::KIND)));
        }
        let name_taken = |t: &Tables, item: &T| {
            T::table(t)
                .values()
                .find(|o| o.name() == item.name())
                .map(|other| StoreError::NameInUse {
                    kind: T::KIND.into(),
                    name: item.name().into(),
                    id: other.id().into(),
                })
        };
        // checked by reference: an object is copied only into the table and the event
        let existing = T::table(self).get(&id).map(|o| {
            (
                o.version(),
                o.name() != item.name(),
                o.meta().map(|m| m.created_at_ms),
            )
        });
        match kind {
            ActionKind::Create => {
                if existing.is_some() {
                    return Err(StoreError::Exists {
                        kind: T::KIND.into(),
                        id,
                    });
                }
                if unique_names(T::KIND) {
                    if let Some(e) = name_taken(self, &item) {
                        return Err(e);
                    }
                }
                let m = item.meta_mut();
                m.version = index;
                m.created_at_ms = now_ms;
                m.updated_at_ms = now_ms;
                self.set(&id, Some(item.clone()));
                Ok((None, item.wrap()))
            }
            ActionKind::Update => {
                let Some((version, renamed, created)) = existing else {
                    return Err(StoreError::NotFound {
                        kind: T::KIND.into(),
                        id,
                    });
                };
                if version != item.version() {
                    return Err(StoreError::Conflict {
                        kind: T::KIND.into(),
                        id,
                        expected: item.version(),
                        actual: version,
                    });
                }
                if unique_names(T::KIND) && renamed {
                    if let Some(e) = name_taken(self, &item) {
                        return Err(e);
                    }
                }
                let m = item.meta_mut();
                m.version = index;
                m.created_at_ms = created.unwrap_or(now_ms);
                m.updated_at_ms = now_ms;
                let old = self.set(&id, Some(item.clone()));
                Ok((old.map(T::wrap), item.wrap()))
            }
            ActionKind::Remove => match self.set::<T>(&id, None) {
                Some(old) => Ok((None, old.wrap())),
                None => Err(StoreError::NotFound {
                    kind: T::KIND.into(),
                    id,
                }),
            },
        }
    }

    fn apply_action(
        &mut self,
        a: StoreAction,
        index: u64,
        now_ms: i64,
    ) -> Result<Change, StoreError> {
        let kind = ActionKind::try_from(a.kind)
            .map_err(|_| StoreError::Invalid(format!("action kind {}", a.kind)))?;
        let obj = a
            .object
            .and_then(|o| o.object)
            .ok_or_else(|| StoreError::Invalid("action without an object".into()))?;
        let (old, new) = match obj {
            Object::Node(x) => self.apply_item(kind, x, index, now_ms),
            Object::Service(x) => self.apply_item(kind, x, index, now_ms),
            Object::Task(x) => self.apply_item(kind, x, index, now_ms),
            Object::Network(x) => self.apply_item(kind, x, index, now_ms),
            Object::Secret(x) => self.apply_item(kind, x, index, now_ms),
            Object::Config(x) => self.apply_item(kind, x, index, now_ms),
            Object::Cluster(x) => self.apply_item(kind, x, index, now_ms),
        }?;
        Ok(Change {
            kind,
            object: Arc::new(new),
            old: old.map(Arc::new),
        })
    }

    /// Applies a batch all or nothing. Returns the changes it made.
    pub fn apply_batch(
        &mut self,
        batch: StoreBatch,
        index: u64,
        now_ms: i64,
    ) -> Result<Vec<Change>, StoreError> {
        // in place, undone from the changes themselves if an action is refused: copying
        // every table per batch costs too much
        let mut changes: Vec<Change> = Vec::with_capacity(batch.actions.len());
        for a in batch.actions {
            match self.apply_action(a, index, now_ms) {
                Ok(c) => changes.push(c),
                Err(e) => {
                    for c in changes.into_iter().rev() {
                        match (c.kind, c.old) {
                            (ActionKind::Create, _) => {
                                let (k, id) = object_key(&c.object);
                                self.remove_object(k, id);
                            }
                            (ActionKind::Update, Some(old)) => self.put_object((*old).clone()),
                            (_, _) => self.put_object((*c.object).clone()),
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(changes)
    }

    fn put_object(&mut self, o: Object) {
        match o {
            Object::Node(x) => insert(self, x),
            Object::Service(x) => insert(self, x),
            Object::Task(x) => insert(self, x),
            Object::Network(x) => insert(self, x),
            Object::Secret(x) => insert(self, x),
            Object::Config(x) => insert(self, x),
            Object::Cluster(x) => insert(self, x),
        }
    }

    fn remove_object(&mut self, kind: &str, id: &str) {
        match kind {
            "node" => drop(self.set::<Node>(id, None)),
            "service" => drop(self.set::<Service>(id, None)),
            "task" => drop(self.set::<Task>(id, None)),
            "network" => drop(self.set::<Network>(id, None)),
            "secret" => drop(self.set::<Secret>(id, None)),
            "config" => drop(self.set::<Config>(id, None)),
            "cluster" => drop(self.set::<Cluster>(id, None)),
            _ => {}
        }
    }

    pub fn snapshot(&self) -> StoreSnapshot {
        let mut objects = Vec::new();
        objects.extend(self.nodes.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        objects.extend(self.services.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        objects.extend(self.tasks.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        objects.extend(self.networks.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        objects.extend(self.secrets.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        objects.extend(self.configs.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        objects.extend(self.clusters.values().cloned().map(|x| StoreObject {
            object: Some(x.wrap()),
        }));
        StoreSnapshot { objects }
    }

    pub fn from_snapshot(s: &StoreSnapshot) -> Tables {
        let mut t = Tables::default();
        for o in s.objects.iter().filter_map(|o| o.object.clone()) {
            t.put_object(o);
        }
        t
    }
}

fn insert<T: StoreItem>(t: &mut Tables, x: T) {
    let id = x.id().to_string();
    t.set(&id, Some(x));
}

/// One change as watchers see it: `object` is the new value (the removed one for a
/// remove); `old` the value before an update. Objects are shared (`Arc`): an object (a
/// service with its previous spec inline) is kilobytes and many watchers see each one.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: ActionKind,
    pub object: Arc<Object>,
    pub old: Option<Arc<Object>>,
}

/// What watchers receive: one committed batch, whole, at its Raft index (empty when the
/// batch was refused). One event per batch, not per change: the scheduler placing ten
/// thousand tasks in one batch must not overrun every watcher's buffer.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub index: u64,
    pub changes: Vec<Change>,
    /// A snapshot replaced everything: watchers start over from the tables, as when
    /// they lag.
    pub restored: bool,
}

/// A store watcher's end.
pub type Events = broadcast::Receiver<Arc<Event>>;

/// Gets a batch of changes committed (through Raft, or directly for tests) and returns
/// once the local store has applied it, with the result of applying it.
pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, batch: StoreBatch)
        -> futures::future::BoxFuture<'_, Result<u64, StoreError>>;
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    tables: RwLock<Tables>,
    events: broadcast::Sender<Arc<Event>>,
    /// The Raft index last applied.
    applied: RwLock<u64>,
    proposer: OnceLock<Arc<dyn Proposer>>,
    /// Serializes transactions on this manager, so that a transaction sees the effects
    /// of the previous one.
    update_lock: tokio::sync::Mutex<()>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    pub fn new() -> Store {
        // a watcher more than 1024 commits behind does a full pass instead
        let (events, _) = broadcast::channel(1024);
        Store {
            inner: Arc::new(Inner {
                tables: RwLock::default(),
                events,
                applied: RwLock::new(0),
                proposer: OnceLock::new(),
                update_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A store whose updates apply directly, with no Raft: for tests of the loops.
    #[cfg(test)]
    pub fn in_memory() -> Store {
        let s = Store::new();
        let direct = DirectProposer {
            store: s.clone(),
            next: std::sync::atomic::AtomicU64::new(1),
        };
        let _ = s.inner.proposer.set(Arc::new(direct));
        s
    }

    /// Sets how updates are committed (once).
    pub fn set_proposer(&self, p: Arc<dyn Proposer>) {
        let _ = self.inner.proposer.set(p);
    }

    /// A consistent read of every table.
    pub fn view<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        let t = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        f(&t)
    }

    /// Events from now on.
    pub fn watch(&self) -> Events {
        self.inner.events.subscribe()
    }

    /// A consistent read and the events after it, with no gap between them.
    pub fn view_and_watch<R>(&self, f: impl FnOnce(&Tables) -> R) -> (R, Events) {
        let t = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        let rx = self.inner.events.subscribe();
        (f(&t), rx)
    }

    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a transaction: `f` reads through the tx and records changes; they are
    /// committed together. Returns `f`'s result, or the commit's error.
    pub async fn update<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _serial = self.inner.update_lock.lock().await;
        let (result, actions) = {
            let t = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
            let mut tx = Tx {
                base: &t,
                overlay: HashMap::new(),
                actions: Vec::new(),
                positions: HashMap::new(),
                sizes: Vec::new(),
                bytes: 0,
            };
            let r = f(&mut tx)?;
            (r, tx.actions.into_iter().flatten().collect::<Vec<_>>())
        };
        if actions.is_empty() {
            return Ok(result);
        }
        check_sizes(&actions)?;
        let proposer = self
            .inner
            .proposer
            .get()
            .ok_or_else(|| StoreError::Proposal("this node is not a manager".into()))?
            .clone();
        proposer.propose(StoreBatch { actions }).await?;
        Ok(result)
    }

    /// Work that may not fit in one commit: runs `f` in one transaction after another
    /// until it says it is done. `f` returns `Ok(true)` when it stopped because its
    /// transaction was [`Tx::full`] (and so made progress), `Ok(false)` when nothing is
    /// left.
    pub async fn update_all(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        while self.update(&mut f).await? {}
        Ok(())
    }

    /// Applies a committed batch (the Raft state machine calls this, in log order).
    pub fn apply(&self, batch: StoreBatch, index: u64, now_ms: i64) -> Result<(), StoreError> {
        let mut t = self.inner.tables.write().unwrap_or_else(|p| p.into_inner());
        let res = t.apply_batch(batch, index, now_ms);
        *self
            .inner
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = index;
        match res {
            Ok(changes) => {
                let _ = self.inner.events.send(Arc::new(Event {
                    index,
                    changes,
                    restored: false,
                }));
                Ok(())
            }
            Err(e) => {
                let _ = self.inner.events.send(Arc::new(Event {
                    index,
                    changes: vec![],
                    restored: false,
                }));
                Err(e)
            }
        }
    }

    /// Replaces everything (a Raft snapshot was installed). Watchers get an event marked
    /// `restored` and start over from the tables.
    pub fn restore(&self, tables: Tables, index: u64) {
        *self.inner.tables.write().unwrap_or_else(|p| p.into_inner()) = tables;
        *self
            .inner
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner()) = index;
        let _ = self.inner.events.send(Arc::new(Event {
            index,
            changes: vec![],
            restored: true,
        }));
    }

    pub fn snapshot(&self) -> (StoreSnapshot, u64) {
        let t = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        (t.snapshot(), self.applied_index())
    }
}

/// Refuses a batch that is too big to commit, or holds an object too big to keep.
fn check_sizes(actions: &[StoreAction]) -> Result<(), StoreError> {
    let mut total = 0;
    for a in actions {
        let n = a.encoded_len();
        if n > MAX_OBJECT_BYTES {
            let (kind, id) = a
                .object
                .as_ref()
                .and_then(|o| o.object.as_ref())
                .map(object_key)
                .unwrap_or(("object", ""));
            return Err(StoreError::TooLarge {
                what: format!("{kind} {id}"),
                size: n,
                limit: MAX_OBJECT_BYTES,
            });
        }
        total += n;
    }
    if total > MAX_TX_BYTES {
        return Err(StoreError::TooLarge {
            what: format!("a change of {} objects", actions.len()),
            size: total,
            limit: MAX_TX_BYTES,
        });
    }
    Ok(())
}

/// Commits by applying at once, numbering batches itself.
#[cfg(test)]
struct DirectProposer {
    store: Store,
    next: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Proposer for DirectProposer {
    fn propose(
        &self,
        batch: StoreBatch,
    ) -> futures::future::BoxFuture<'_, Result<u64, StoreError>> {
        let index = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let res = self.store.apply(batch, index, now_ms()).map(|_| index);
        Box::pin(async move { res })
    }
}

/// A transaction: reads see its own changes.
pub struct Tx<'a> {
    base: &'a Tables,
    /// This transaction's changes by kind and ID (`None`: removed).
    overlay: HashMap<&'static str, HashMap<String, Option<Object>>>,
    /// The batch so far; a folded-away change leaves a hole.
    actions: Vec<Option<StoreAction>>,
    /// Where each object's change is in `actions` (a big transaction, the scheduler
    /// placing ten thousand tasks, must not search the batch for every change).
    positions: HashMap<(&'static str, String), usize>,
    /// The encoded size of each action (0 for a hole), and their sum.
    sizes: Vec<usize>,
    bytes: usize,
}

impl Tx<'_> {
    pub fn get<T: StoreItem + TryFromObject>(&self, id: &str) -> Option<T> {
        match self.changed::<T>(id) {
            Some(Some(o)) => T::from_object_ref(o).cloned(),
            Some(None) => None,
            None => T::table(self.base).get(id).cloned(),
        }
    }

    /// This transaction's change of an object, if it has one.
    fn changed<T: StoreItem>(&self, id: &str) -> Option<&Option<Object>> {
        self.overlay.get(T::KIND).and_then(|m| m.get(id))
    }

    /// This transaction's objects of a kind (created or updated in it).
    fn changed_items<T: StoreItem + TryFromObject>(&self) -> impl Iterator<Item = &T> + '_ {
        self.overlay
            .get(T::KIND)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|o| o.as_ref().and_then(T::from_object_ref))
    }

    /// Calls `f` on every object of a kind, with this transaction's changes, by
    /// reference: no copy of the table (a big cluster has tens of thousands of tasks).
    pub fn for_each<T: StoreItem + TryFromObject>(&self, mut f: impl FnMut(&T)) {
        let changed = self.overlay.get(T::KIND);
        for (id, x) in T::table(self.base) {
            if !changed.is_some_and(|m| m.contains_key(id)) {
                f(x);
            }
        }
        for x in self.changed_items::<T>() {
            f(x);
        }
    }

    /// A service's tasks (`by_node`: a node's), with this transaction's changes, in ID
    /// order; through the store's index, not a scan.
    pub fn tasks_of(&self, key: &str, by_node: bool) -> Vec<Task> {
        let base: Vec<&Task> = if by_node {
            self.base.tasks_on_node(key).collect()
        } else {
            self.base.tasks_of_service(key).collect()
        };
        let changed = self.overlay.get(Task::KIND);
        let mut out: Vec<Task> = base
            .into_iter()
            .filter(|t| !changed.is_some_and(|m| m.contains_key(&t.id)))
            .cloned()
            .collect();
        out.extend(
            self.changed_items::<Task>()
                .filter(|t| {
                    if by_node {
                        t.node_id == key
                    } else {
                        t.service_id == key
                    }
                })
                .cloned(),
        );
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The objects of a kind that match, with this transaction's changes; only those are
    /// copied.
    pub fn filter<T: StoreItem + TryFromObject>(&self, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        self.for_each(|x: &T| {
            if pred(x) {
                out.push(x.clone());
            }
        });
        out
    }

    /// Every object of a kind, with this transaction's changes.
    pub fn list<T: StoreItem + TryFromObject>(&self) -> Vec<T> {
        let mut m: BTreeMap<String, T> = T::table(self.base).clone();
        for (id, o) in self.overlay.get(T::KIND).into_iter().flatten() {
            match o.as_ref().and_then(T::from_object_ref).cloned() {
                Some(x) => {
                    m.insert(id.clone(), x);
                }
                None => {
                    m.remove(id);
                }
            }
        }
        m.into_values().collect()
    }

    /// Records a change. A second change of one object in a transaction folds into the
    /// first (create+update is a create of the final value, create+remove is nothing),
    /// so a batch never holds two changes of one object.
    fn record<T: StoreItem>(&mut self, kind: ActionKind, item: T, after: Option<Object>) {
        let id = item.id().to_string();
        self.overlay
            .entry(T::KIND)
            .or_default()
            .insert(id.clone(), after);
        let action = |k: ActionKind, item: T| StoreAction {
            kind: k as i32,
            object: Some(StoreObject {
                object: Some(item.wrap()),
            }),
        };
        let key = (T::KIND, id);
        let prev = self
            .positions
            .get(&key)
            .and_then(|i| self.actions[*i].as_ref().map(|a| (*i, a.kind)));
        let i = match prev {
            None => {
                self.positions.insert(key, self.actions.len());
                self.actions.push(Some(action(kind, item)));
                self.sizes.push(0);
                self.actions.len() - 1
            }
            Some((i, prev)) => {
                let prev = ActionKind::try_from(prev).unwrap_or(ActionKind::Update);
                match (prev, kind) {
                    (ActionKind::Create, ActionKind::Remove) => {
                        self.actions[i] = None;
                        self.positions.remove(&key);
                    }
                    (ActionKind::Create, _) => {
                        self.actions[i] = Some(action(ActionKind::Create, item))
                    }
                    (_, k) => self.actions[i] = Some(action(k, item)),
                }
                i
            }
        };
        let size = self.actions[i].as_ref().map_or(0, |a| a.encoded_len());
        self.bytes = self.bytes - self.sizes[i] + size;
        self.sizes[i] = size;
    }

    /// Whether this transaction changes the object already (another change of it folds
    /// into that one: it takes no more room).
    pub fn has_change<T: StoreItem>(&self, id: &str) -> bool {
        self.positions.contains_key(&(T::KIND, id.to_string()))
    }

    /// Whether this transaction holds a loop's worth of changes ([`TX_BATCH_CHANGES`] or
    /// [`TX_BATCH_BYTES`]): a loop that makes many changes stops adding when it is, and
    /// goes on in its next commit.
    pub fn full(&self) -> bool {
        self.positions.len() >= TX_BATCH_CHANGES || self.bytes >= TX_BATCH_BYTES
    }

    pub fn create<T: StoreItem + TryFromObject>(&mut self, item: T) -> Result<(), StoreError> {
        if self.get::<T>(item.id()).is_some() {
            return Err(StoreError::Exists {
                kind: T::KIND.into(),
                id: item.id().into(),
            });
        }
        if unique_names(T::KIND) && !item.name().is_empty() {
            if let Some(other) = self
                .list::<T>()
                .into_iter()
                .find(|o| o.name() == item.name())
            {
                return Err(StoreError::NameInUse {
                    kind: T::KIND.into(),
                    name: item.name().into(),
                    id: other.id().into(),
                });
            }
        }
        let after = Some(item.clone().wrap());
        self.record(ActionKind::Create, item, after);
        Ok(())
    }

    /// Updates an object read earlier; refused at commit if it changed meanwhile.
    pub fn update<T: StoreItem + TryFromObject>(&mut self, item: T) -> Result<(), StoreError> {
        if self.get::<T>(item.id()).is_none() {
            return Err(StoreError::NotFound {
                kind: T::KIND.into(),
                id: item.id().into(),
            });
        }
        let after = Some(item.clone().wrap());
        self.record(ActionKind::Update, item, after);
        Ok(())
    }

    pub fn remove<T: StoreItem + TryFromObject>(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(item) = self.get::<T>(id) else {
            return Err(StoreError::NotFound {
                kind: T::KIND.into(),
                id: id.into(),
            });
        };
        self.record(ActionKind::Remove, item, None);
        Ok(())
    }
}

/// An object's kind and ID.
fn object_key(o: &Object) -> (&'static str, &str) {
    match o {
        Object::Node(x) => (Node::KIND, &x.id),
        Object::Service(x) => (Service::KIND, &x.id),
        Object::Task(x) => (Task::KIND, &x.id),
        Object::Network(x) => (Network::KIND, &x.id),
        Object::Secret(x) => (Secret::KIND, &x.id),
        Object::Config(x) => (Config::KIND, &x.id),
        Object::Cluster(x) => (Cluster::KIND, &x.id),
    }
}

/// Getting a typed object back out of a [`Object`].
/// (By reference: a transaction's reads copy only what they return.)
pub trait TryFromObject: Sized {
    fn from_object_ref(o: &Object) -> Option<&Self>;
}

macro_rules! from_object {
    ($($ty:ident),*) => {$(
        impl TryFromObject for $ty {
            fn from_object_ref(o: &Object) -> Option<&Self> {
                match o {
                    Object::$ty(x) => Some(x),
                    _ => None,
                }
            }
        }
    )*};
}
from_object!(Node, Service, Task, Network, Secret, Config, Cluster);

/// Encodes a batch for the Raft log.
pub fn encode_batch(b: &StoreBatch) -> Vec<u8> {
    b.encode_to_vec()
}

pub fn decode_batch(bytes: &[u8]) -> Result<StoreBatch, StoreError> {
    StoreBatch::decode(bytes).map_err(|e| StoreError::Invalid(format!("undecodable batch: {e}")))
}

/// A fresh object ID: 25 lowercase base-36 characters, as swarmkit makes them.
pub fn new_id() -> String {
    let mut b = [0u8; 25];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter()
        .map(|x| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[(*x % 36) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{Annotations, ServiceSpec};

    fn service(id: &str, name: &str) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn transactions_commit_together_and_watchers_see_them() {
        let s = Store::in_memory();
        let mut rx = s.watch();
        s.update(|tx| {
            tx.create(service("a", "web"))?;
            tx.create(Task {
                id: "t1".into(),
                service_id: "a".into(),
                ..Default::default()
            })?;
            assert_eq!(
                tx.list::<Task>().len(),
                1,
                "a transaction reads its own writes"
            );
            Ok(())
        })
        .await
        .unwrap();
        let e = rx.recv().await.unwrap();
        assert_eq!(e.index, 1);
        assert!(matches!(
            &e.changes[..],
            [
                Change { kind: ActionKind::Create, object: a, .. },
                Change { kind: ActionKind::Create, object: b, .. },
            ] if matches!(**a, Object::Service(_)) && matches!(**b, Object::Task(_))
        ));
        let v = s.view(|t| t.services["a"].meta.unwrap().version);
        assert_eq!(v, 1);
    }

    #[tokio::test]
    async fn stale_updates_and_duplicate_names_are_refused_whole() {
        let s = Store::in_memory();
        s.update(|tx| tx.create(service("a", "web"))).await.unwrap();
        let stale = s.view(|t| t.services["a"].clone());
        let mut fresh = stale.clone();
        fresh
            .spec
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .labels
            .insert("x".into(), "1".into());
        s.update(|tx| tx.update(fresh)).await.unwrap();
        let err = s
            .update(|tx| {
                tx.create(Task {
                    id: "t9".into(),
                    ..Default::default()
                })?;
                tx.update(stale)
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(
            s.view(|t| t.tasks.is_empty()),
            "nothing of a refused batch is applied"
        );
        let err = s
            .update(|tx| tx.create(service("b", "web")))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service name \"web\" is already in use by a"
        );
        let err = s
            .update(|tx| tx.remove::<Service>("zzz"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "service zzz not found");
    }

    #[tokio::test]
    async fn several_changes_of_one_object_in_a_transaction_fold() {
        let s = Store::in_memory();
        s.update(|tx| {
            tx.create(Task {
                id: "t".into(),
                ..Default::default()
            })
        })
        .await
        .unwrap();
        s.update(|tx| {
            for slot in 1..=3 {
                let mut t = tx.get::<Task>("t").unwrap();
                t.slot = slot;
                tx.update(t)?;
            }
            tx.create(Task {
                id: "u".into(),
                ..Default::default()
            })?;
            tx.remove::<Task>("u")
        })
        .await
        .unwrap();
        assert_eq!(s.view(|t| t.tasks["t"].slot), 3);
        assert!(s.view(|t| !t.tasks.contains_key("u")));
    }

    #[tokio::test]
    async fn tasks_by_service_and_node_follow_every_change() {
        let s = Store::in_memory();
        let task = |id: &str, service: &str, node: &str| Task {
            id: id.into(),
            service_id: service.into(),
            node_id: node.into(),
            ..Default::default()
        };
        s.update(|tx| {
            tx.create(task("t1", "a", "n1"))?;
            tx.create(task("t2", "a", ""))?;
            tx.create(task("t3", "b", "n1"))
        })
        .await
        .unwrap();
        let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        s.update(|tx| {
            // the transaction's own changes count: t2 placed, t3 gone, t4 new
            let mut t2 = tx.get::<Task>("t2").unwrap();
            t2.node_id = "n1".into();
            tx.update(t2)?;
            tx.remove::<Task>("t3")?;
            tx.create(task("t4", "a", "n2"))?;
            assert_eq!(ids(tx.tasks_of("a", false)), ["t1", "t2", "t4"]);
            assert_eq!(ids(tx.tasks_of("n1", true)), ["t1", "t2"]);
            assert_eq!(ids(tx.tasks_of("b", false)), Vec::<String>::new());
            Ok(())
        })
        .await
        .unwrap();
        let committed = |f: fn(&Tables) -> Vec<String>| s.view(f);
        assert_eq!(
            committed(|t| t.tasks_on_node("n1").map(|x| x.id.clone()).collect()),
            ["t1", "t2"]
        );
        assert_eq!(
            committed(|t| t.tasks_of_service("b").map(|x| x.id.clone()).collect()),
            Vec::<String>::new()
        );
        // a refused batch leaves the index as it was
        let stale = s.view(|t| t.tasks["t1"].clone());
        s.update(|tx| {
            let mut t = tx.get::<Task>("t1").unwrap();
            t.node_id = "n9".into();
            tx.update(t)
        })
        .await
        .unwrap();
        let refused = s
            .update(|tx| {
                tx.create(task("t5", "c", "n9"))?;
                tx.update(stale)
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(
            committed(|t| t.tasks_on_node("n9").map(|x| x.id.clone()).collect()),
            ["t1"]
        );
        assert_eq!(
            committed(|t| t.tasks_of_service("c").map(|x| x.id.clone()).collect()),
            Vec::<String>::new()
        );
        // a snapshot rebuilds it
        let back = s.view(|t| Tables::from_snapshot(&t.snapshot()));
        assert_eq!(back, s.view(|t| t.clone()));
    }

    #[tokio::test]
    async fn snapshots_round_trip() {
        let s = Store::in_memory();
        s.update(|tx| {
            tx.create(service("a", "web"))?;
            tx.create(Node {
                id: "n1".into(),
                ..Default::default()
            })
        })
        .await
        .unwrap();
        let (snap, idx) = s.snapshot();
        let bytes = snap.encode_to_vec();
        let back = Tables::from_snapshot(&StoreSnapshot::decode(bytes.as_slice()).unwrap());
        assert_eq!(idx, 1);
        assert_eq!(back, s.view(|t| t.clone()));
    }

    #[test]
    fn ids() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert_ne!(a, new_id());
    }
}
