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
    Cluster, Config, Meta, Network, Node, Secret, Service, ServiceRevision, StoreAction,
    StoreBatch, StoreObject, StoreSnapshot, Task,
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
item!(ServiceRevision, "revision", revisions, Revision, |s| s
    .id
    .as_str());
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
    /// Services' revisions, by "<service id>/<revision>".
    pub revisions: BTreeMap<String, ServiceRevision>,
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
            Object::Revision(x) => self.apply_item(kind, x, index, now_ms),
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
            Object::Revision(x) => insert(self, x),
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
            "revision" => drop(self.set::<ServiceRevision>(id, None)),
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
        objects.extend(self.revisions.values().cloned().map(|x| StoreObject {
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
            let mut tx = Tx::on(&t);
            let r = f(&mut tx)?;
            (r, tx.into_actions())
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
        Object::Revision(x) => (ServiceRevision::KIND, &x.id),
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

impl TryFromObject for ServiceRevision {
    fn from_object_ref(o: &Object) -> Option<&Self> {
        match o {
            Object::Revision(x) => Some(x),
            _ => None,
        }
    }
}

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

mod tx;
pub use tx::Tx;

#[cfg(test)]
mod tests;
