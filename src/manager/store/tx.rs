//! A transaction on the store: reads see its own changes, and its changes fold (an
//! object changed twice is one change), are counted and bounded in bytes, and become the
//! batch proposed to Raft.

use std::collections::HashMap;

use prost::Message;
use shoal_proto::store_action::Kind as ActionKind;
use shoal_proto::store_object::Object;
use shoal_proto::{StoreAction, StoreObject, Task};

use super::*;

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

impl<'a> Tx<'a> {
    /// A transaction on `base`, with no change yet.
    pub(super) fn on(base: &'a Tables) -> Tx<'a> {
        Tx {
            base,
            overlay: HashMap::new(),
            actions: Vec::new(),
            positions: HashMap::new(),
            sizes: Vec::new(),
            bytes: 0,
        }
    }

    /// Its changes, in order, for the batch.
    pub(super) fn into_actions(self) -> Vec<StoreAction> {
        self.actions.into_iter().flatten().collect()
    }

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
