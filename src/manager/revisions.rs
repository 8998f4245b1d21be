//! A service's revisions: every change of its spec is one, kept in its own table (the
//! last N, `swarm update --service-history-limit`, 10 by default), so that `service
//! history` lists them and `service rollback --to-revision` goes back to any. Each is
//! written once: the service, which Raft carries whole at every change of its update's
//! status, holds only its current spec. Swarm keeps one previous spec and swaps it on
//! rollback, so a second rollback flips back to the bad spec; here a rollback's revision
//! takes its target's parent, and the next rollback goes further back.
//!
//! A revision keeps the spec version its tasks carry. A rollback restores it, so tasks
//! already on the restored spec are kept (only the others are replaced); a change of the
//! task spec takes a version above every one given so far.

use shoal_proto::update_status::State;
use shoal_proto::*;

use super::store::{StoreError, Tables, Tx};
use crate::spec::update::changed_fields;

pub const DEFAULT_HISTORY_LIMIT: usize = 10;

/// The cluster's history limit.
pub fn limit(c: Option<&Cluster>) -> usize {
    c.and_then(|c| c.spec.as_ref())
        .and_then(|s| s.orchestration.as_ref())
        .map(|o| o.service_history_limit)
        .filter(|n| *n > 0)
        .map_or(DEFAULT_HISTORY_LIMIT, |n| n as usize)
}

fn key(service: &str, revision: u64) -> String {
    format!("{service}/{revision}")
}

/// A service's revisions, oldest first.
pub fn history(t: &Tables, service: &str) -> Vec<ServiceRevision> {
    let prefix = format!("{service}/");
    let mut out: Vec<ServiceRevision> = t
        .revisions
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(_, r)| r.clone())
        .collect();
    out.sort_by_key(|r| r.revision);
    out
}

fn history_in(tx: &Tx<'_>, service: &str) -> Vec<ServiceRevision> {
    let mut out = tx.filter(|r: &ServiceRevision| r.service_id == service);
    out.sort_by_key(|r| r.revision);
    out
}

/// The service as callers see it: with its revisions, and Docker's `PreviousSpec` (what
/// a plain rollback restores).
pub fn fill(t: &Tables, s: &mut Service) {
    s.history = history(t, &s.id);
    let parent = s
        .history
        .iter()
        .find(|r| r.revision == s.revision)
        .map_or(0, |r| r.parent);
    s.previous_spec = s
        .history
        .iter()
        .find(|r| r.revision == parent && parent > 0)
        .and_then(|r| r.spec.clone());
}

/// A new service's first revision (in the commit that creates it).
pub fn start(tx: &mut Tx<'_>, s: &mut Service, now: i64) -> Result<(), StoreError> {
    s.revision = 1;
    s.latest_spec_version = s.spec_version;
    tx.create(ServiceRevision {
        id: key(&s.id, 1),
        service_id: s.id.clone(),
        revision: 1,
        spec: s.spec.clone(),
        spec_version: s.spec_version,
        at_ms: now,
        ..Default::default()
    })
}

/// A service's revisions go with it.
pub fn remove_all(tx: &mut Tx<'_>, service: &str) -> Result<(), StoreError> {
    for r in history_in(tx, service) {
        tx.remove::<ServiceRevision>(&r.id)?;
    }
    Ok(())
}

/// Gives a service stored before revisions existed its revisions: its previous spec (if
/// it has one) and its current one, the parent of the other.
fn seed(tx: &mut Tx<'_>, s: &mut Service) -> Result<(), StoreError> {
    if s.revision > 0 && !history_in(tx, &s.id).is_empty() {
        return Ok(());
    }
    let at = s.meta.map_or(0, |m| m.updated_at_ms);
    let Some(prev) = s.previous_spec.take() else {
        return start(tx, s, at);
    };
    // (each change of the task spec took the next version then)
    let same_task = s.spec.as_ref().map(|x| &x.task) == Some(&prev.task);
    let prev_version = if same_task {
        s.spec_version
    } else {
        s.spec_version.saturating_sub(1)
    };
    let cur = s.spec.clone();
    let version = s.spec_version;
    s.spec = Some(prev);
    s.spec_version = prev_version;
    start(tx, s, at)?;
    s.spec_version = version;
    s.latest_spec_version = version;
    let was = s.spec.clone().unwrap_or_default();
    push(tx, s, cur.unwrap_or_default(), 1, 0, &was, usize::MAX, at)
}

/// Whether an update of the service is under way or stopped half-way.
fn unfinished(s: &Service) -> bool {
    s.update_state()
        .is_some_and(|x| x.is_rolling() || x.is_paused())
}

fn paused(s: &Service) -> bool {
    s.update_state().is_some_and(State::is_paused)
}

/// Makes `spec` the service's, as a new revision (none when nothing changed). A change
/// of the task spec starts a new update; one that keeps the task spec during an
/// unfinished update keeps that update's rollback target (Swarm's resume of a paused
/// update by an unrelated `service update` loses it). Any update resumes a paused one.
pub fn update(
    tx: &mut Tx<'_>,
    s: &mut Service,
    spec: ServiceSpec,
    limit: usize,
    now: i64,
) -> Result<(), StoreError> {
    seed(tx, s)?;
    let was_unfinished = unfinished(s);
    if paused(s) {
        s.update_status = None; // resumed, as Swarm does
    }
    let Some(cur) = s.spec.clone() else {
        return Ok(());
    };
    if cur == spec {
        return Ok(());
    }
    let task_changed = cur.task != spec.task;
    let parent = if !task_changed && was_unfinished {
        tx.get::<ServiceRevision>(&key(&s.id, s.revision))
            .map_or(0, |r| r.parent)
    } else {
        s.revision
    };
    if task_changed {
        s.latest_spec_version = s.latest_spec_version.max(s.spec_version) + 1;
        s.spec_version = s.latest_spec_version;
        s.update_status = None; // a new update, with its own counts
    }
    push(tx, s, spec, parent, 0, &cur, limit, now)
}

/// Rolls the service back: to its current revision's parent, or to `to`. The update
/// that follows is a rollback (ROLLBACK_STARTED, `message`), under the restored spec's
/// rollback config, as in Swarm. `Ok(Err(why))`: there is nothing to roll back to.
pub fn rollback(
    tx: &mut Tx<'_>,
    s: &mut Service,
    to: Option<u64>,
    message: &str,
    limit: usize,
    now: i64,
) -> Result<Result<(), String>, StoreError> {
    seed(tx, s)?;
    let name = crate::spec::docker::service_name(s).to_string();
    let current = tx
        .get::<ServiceRevision>(&key(&s.id, s.revision))
        .unwrap_or_default();
    let target = match to {
        None if current.parent == 0 => {
            return Ok(Err(format!(
                "service {name} has no previous spec to roll back to"
            )))
        }
        None => current.parent,
        Some(r) if r == s.revision => {
            return Ok(Err(format!(
                "revision {r} is service {name}'s current spec: nothing to roll back to"
            )))
        }
        Some(r) => r,
    };
    let Some(t) = tx.get::<ServiceRevision>(&key(&s.id, target)) else {
        let kept: Vec<String> = history_in(tx, &s.id)
            .iter()
            .map(|r| r.revision.to_string())
            .collect();
        return Ok(Err(format!(
            "service {name} has no revision {target} (it keeps revisions {})",
            kept.join(", ")
        )));
    };
    let cur = s.spec.clone().unwrap_or_default();
    s.spec_version = t.spec_version;
    let started = s.update_status.as_ref().map_or(0, |u| u.started_at_ms);
    // a job has no rolling update: it runs again, all at once (the control API's)
    let job = crate::spec::service::is_job(s.mode());
    s.update_status = Some(UpdateStatus {
        state: if job {
            State::RollbackCompleted
        } else {
            State::RollbackStarted
        } as i32,
        started_at_ms: now.max(started + 1),
        completed_at_ms: if job { now } else { 0 },
        message: message.into(),
        ..Default::default()
    });
    push(
        tx,
        s,
        t.spec.unwrap_or_default(),
        t.parent,
        t.revision,
        &cur,
        limit,
        now,
    )?;
    if let Some(mut r) = tx.get::<ServiceRevision>(&key(&s.id, s.revision)) {
        r.reason = message.into();
        tx.update(r)?;
    }
    Ok(Ok(()))
}

#[allow(clippy::too_many_arguments)]
fn push(
    tx: &mut Tx<'_>,
    s: &mut Service,
    spec: ServiceSpec,
    parent: u64,
    rollback_of: u64,
    was: &ServiceSpec,
    limit: usize,
    now: i64,
) -> Result<(), StoreError> {
    let kept = history_in(tx, &s.id);
    let revision = kept
        .iter()
        .map(|r| r.revision)
        .max()
        .unwrap_or(0)
        .max(s.revision)
        + 1;
    tx.create(ServiceRevision {
        id: key(&s.id, revision),
        service_id: s.id.clone(),
        revision,
        spec: Some(spec.clone()),
        spec_version: s.spec_version,
        at_ms: now,
        parent,
        rollback_of,
        change: changed_fields(was, &spec).join(","),
        ..Default::default()
    })?;
    s.revision = revision;
    s.spec = Some(spec);
    s.previous_spec = None; // (its parent's: filled in answers)
    s.history.clear();
    // the oldest go, but never the new revision's parent: what a rollback restores
    let mut excess = (kept.len() + 1).saturating_sub(limit.max(2));
    for r in kept.iter().filter(|r| r.revision != parent) {
        if excess == 0 {
            break;
        }
        tx.remove::<ServiceRevision>(&r.id)?;
        excess -= 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::Store;
    use shoal_proto::service_spec::Mode;

    fn spec(image: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec {
            annotations: Some(Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas })),
            ..Default::default()
        }
    }

    fn image(s: &Service) -> &str {
        crate::spec::docker::service_image(s)
    }

    /// Runs `f` on a new service "web" (busybox "a", revision 1), in one commit; returns
    /// the store.
    async fn with_service(f: impl FnOnce(&mut Tx<'_>, &mut Service)) -> Store {
        let store = Store::in_memory();
        store
            .update(|tx| {
                let mut s = Service {
                    id: "svc".into(),
                    spec: Some(spec("a", 1)),
                    spec_version: 1,
                    ..Default::default()
                };
                start(tx, &mut s, 1)?;
                f(tx, &mut s);
                tx.create(s)
            })
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn rollback_goes_back_without_flipping_and_keeps_spec_versions() {
        let store = with_service(|tx, s| {
            update(tx, s, spec("b", 1), 10, 2).unwrap();
            update(tx, s, spec("c", 1), 10, 3).unwrap();
            assert_eq!((s.revision, s.spec_version), (3, 3));
            rollback(tx, s, None, "manually requested rollback", 10, 4)
                .unwrap()
                .unwrap();
            assert_eq!(
                (image(s), s.spec_version),
                ("b", 2),
                "b's version: its tasks are kept"
            );
            rollback(tx, s, None, "again", 10, 5).unwrap().unwrap();
            assert_eq!(
                (image(s), s.spec_version),
                ("a", 1),
                "further back, not back to c"
            );
            let e = rollback(tx, s, None, "again", 10, 6).unwrap().unwrap_err();
            assert!(e.contains("no previous spec"), "{e}");
            // a change after a rollback takes a version no task has had
            update(tx, s, spec("d", 1), 10, 7).unwrap();
            assert_eq!(s.spec_version, 4);
            rollback(tx, s, Some(3), "to 3", 10, 8).unwrap().unwrap();
            assert_eq!((image(s), s.spec_version), ("c", 3));
            let e = rollback(tx, s, Some(99), "", 10, 9).unwrap().unwrap_err();
            assert!(e.contains("no revision 99"), "{e}");
        })
        .await;
        let mut s = store.view(|t| t.services["svc"].clone());
        assert!(
            s.history.is_empty() && s.previous_spec.is_none(),
            "not stored in the service"
        );
        store.view(|t| fill(t, &mut s));
        let rolled: Vec<u64> = s.history.iter().map(|r| r.rollback_of).collect();
        assert_eq!(rolled, [0, 0, 0, 2, 1, 0, 3]);
        assert_eq!(
            image(&Service {
                spec: s.previous_spec.clone(),
                ..Default::default()
            }),
            "b"
        );
    }

    #[tokio::test]
    async fn scaling_a_paused_update_keeps_its_rollback_target() {
        with_service(|tx, s| {
            update(tx, s, spec("b", 1), 10, 2).unwrap();
            s.update_status = Some(UpdateStatus {
                state: State::Paused as i32,
                ..Default::default()
            });
            update(tx, s, spec("b", 3), 10, 3).unwrap();
            assert_eq!(s.update_status, None, "resumed");
            assert_eq!(s.spec_version, 2, "the task spec is the same");
            rollback(tx, s, None, "m", 10, 4).unwrap().unwrap();
            assert_eq!(image(s), "a", "the spec before the paused update");
            // nothing changed: no revision
            let n = history_in(tx, &s.id).len();
            let same = s.spec.clone().unwrap();
            update(tx, s, same, 10, 5).unwrap();
            assert_eq!(history_in(tx, &s.id).len(), n);
        })
        .await;
    }

    #[tokio::test]
    async fn a_service_stored_before_revisions_keeps_its_previous_spec() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                let mut s = Service {
                    id: "old".into(),
                    spec: Some(spec("b", 1)),
                    previous_spec: Some(spec("a", 1)),
                    spec_version: 2,
                    ..Default::default()
                };
                rollback(tx, &mut s, None, "m", 10, 5).unwrap().unwrap();
                assert_eq!((image(&s), s.spec_version), ("a", 1));
                tx.create(s)
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn trimming_keeps_the_rollback_target() {
        with_service(|tx, s| {
            update(tx, s, spec("b", 1), 3, 2).unwrap();
            s.update_status = Some(UpdateStatus {
                state: State::Updating as i32,
                ..Default::default()
            });
            // scaled again and again during the update: its target (a) stays
            for n in 2..8 {
                update(tx, s, spec("b", n), 3, 3).unwrap();
            }
            rollback(tx, s, None, "m", 3, 4).unwrap().unwrap();
            assert_eq!(image(s), "a");
        })
        .await;
    }

    #[tokio::test]
    async fn history_keeps_the_last_n() {
        let store = with_service(|tx, s| {
            for i in 0..5 {
                update(tx, s, spec(&format!("i{i}"), 1), 3, 2 + i).unwrap();
            }
        })
        .await;
        let h = store.view(|t| history(t, "svc"));
        let revs: Vec<u64> = h.iter().map(|r| r.revision).collect();
        assert_eq!(revs, [4, 5, 6]);
        assert_eq!(h[2].change, "task.container.image");
    }
}
