//! Secrets and configs in the store: made once under a name, removed only while no
//! service uses them, references resolved by name (an unknown one refused, naming its
//! field) to an ID and a version, a secret's data never in an answer, and updates that
//! make versions and roll the services that use them.

use super::*;
use crate::manager::control::create_service;
use crate::manager::files;
use crate::manager::store::StoreItem as _;

fn config(name: &str, data: &[u8]) -> Config {
    Config {
        spec: Some(ConfigSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            data: data.to_vec(),
        }),
        ..Default::default()
    }
}

fn using(name: &str, config: &str) -> ServiceSpec {
    let mut spec = service(name, replicated(1)).spec.unwrap();
    let c = spec.task.as_mut().unwrap().container.as_mut().unwrap();
    c.configs
        .push(crate::spec::files::parse_reference(config).unwrap());
    spec
}

#[tokio::test]
async fn a_config_in_use_is_not_removed_and_names_are_unique() {
    let store = Store::in_memory();
    let c = files::create(&store, config("site", b"hello"))
        .await
        .unwrap();
    assert_eq!(
        files::get::<Config>(&store, "site")
            .unwrap()
            .spec
            .unwrap()
            .data,
        b"hello"
    );
    let e = files::create(&store, config("site", b"again"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already in use"), "{e}");
    let e = files::create(&store, config("-bad", b"x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("annotations.name"), "{e}");

    // a service that uses it (as one resolved by an older version would be stored)
    let mut spec = using("web", "source=site,target=/etc/site");
    let r = &mut spec
        .task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .configs[0];
    r.source_id = c.id.clone();
    let s = Service {
        id: new_id(),
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    };
    let sid = s.id.clone();
    store.update(|tx| tx.create(s)).await.unwrap();
    let e = files::remove::<Config>(&store, "site")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "config 'site' is in use by the following service: web");
    store.update(|tx| tx.remove::<Service>(&sid)).await.unwrap();
    files::remove::<Config>(&store, "site").await.unwrap();
    assert!(store.view(|t| t.configs.is_empty()));
}

#[tokio::test]
async fn references_are_resolved_by_name_to_an_id_and_a_version() {
    let store = Store::in_memory();
    let e = create_service(&store, using("web", "nope"), &no_registry())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("task.container.configs[0].source: config not found: nope"),
        "{e}"
    );
    assert!(store.view(|t| t.services.is_empty()));
    let c = files::create(&store, config("site", b"hello"))
        .await
        .unwrap();
    assert_eq!(c.version, 1);
    let s = create_service(&store, using("web", "site"), &no_registry())
        .await
        .unwrap();
    let r = s.spec.unwrap().task.unwrap().container.unwrap().configs[0].clone();
    assert_eq!(
        (r.source_id.as_str(), r.source_name.as_str(), r.version),
        (c.id.as_str(), "site", 1)
    );
}

#[tokio::test]
async fn a_secrets_data_never_comes_back() {
    let store = Store::in_memory();
    let s = Secret {
        spec: Some(SecretSpec {
            annotations: Some(Annotations {
                name: "pw".into(),
                ..Default::default()
            }),
            data: b"hunter2".to_vec(),
        }),
        ..Default::default()
    };
    let made = files::create(&store, s).await.unwrap();
    assert!(made.spec.as_ref().unwrap().data.is_empty());
    assert!(files::get::<Secret>(&store, "pw")
        .unwrap()
        .spec
        .unwrap()
        .data
        .is_empty());
    assert!(files::list::<Secret>(&store)[0]
        .spec
        .as_ref()
        .unwrap()
        .data
        .is_empty());
    assert!(!format!("{made:?}").contains("hunter2"));
    // (kept in the store, for the nodes that need it)
    assert_eq!(
        store.view(|t| t.secrets[&made.id].spec.clone().unwrap().data),
        b"hunter2"
    );
}

#[tokio::test]
async fn an_update_makes_a_version_rolls_its_users_and_keeps_what_is_named() {
    let store = Store::in_memory();
    let c = files::create(&store, config("site", b"one")).await.unwrap();
    let web = create_service(&store, using("web", "site"), &no_registry())
        .await
        .unwrap();
    create_service(
        &store,
        service("other", replicated(1)).spec.unwrap(),
        &no_registry(),
    )
    .await
    .unwrap();
    let spec_version = |name: &str| {
        store.view(|t| {
            t.services
                .values()
                .find(|s| s.name() == name)
                .unwrap()
                .spec_version
        })
    };
    let (web_v, other_v) = (spec_version("web"), spec_version("other"));
    let refs = |name: &str| {
        store.view(|t| {
            let s = t.services.values().find(|s| s.name() == name).unwrap();
            s.spec
                .clone()
                .unwrap()
                .task
                .unwrap()
                .container
                .unwrap()
                .configs
        })
    };

    let u = files::update::<Config>(&store, "site", 0, "", None, Some(b"two".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        (u.object.version, u.rolled.clone()),
        (2, vec!["web".to_string()])
    );
    assert_eq!(u.object.spec.as_ref().unwrap().data, b"two");
    assert_eq!(refs("web")[0].version, 2);
    assert!(spec_version("web") > web_v, "web rolls");
    assert_eq!(
        spec_version("other"),
        other_v,
        "a service that does not use it is left"
    );
    // version 1 is kept: web's revision before names it (its rollback)
    let kept = store.view(|t| t.configs[&c.id].old_versions.clone());
    assert_eq!(kept.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    assert_eq!(kept[0].data, b"one");

    // labels alone, and the same data: no version
    let mut labels = std::collections::HashMap::new();
    labels.insert("team".to_string(), "web".to_string());
    let u = files::update::<Config>(&store, "site", 0, "", Some(labels), Some(b"two".to_vec()))
        .await
        .unwrap();
    assert_eq!((u.object.version, u.rolled.len()), (2, 0));
    assert_eq!(
        u.object.spec.unwrap().annotations.unwrap().labels["team"],
        "web"
    );

    // refused, nothing changed: a new name, oversize data, nothing to do, an old read
    let e = files::update::<Config>(&store, "site", 0, "other", None, Some(b"x".to_vec()));
    assert!(e
        .await
        .unwrap_err()
        .to_string()
        .contains("name cannot change"));
    let e = files::update::<Config>(&store, "site", 0, "", None, Some(vec![b'x'; 1000 << 10]));
    assert!(e
        .await
        .unwrap_err()
        .to_string()
        .contains("less than 1000 KiB"));
    let e = files::update::<Config>(&store, "site", 0, "", None, None);
    assert!(e
        .await
        .unwrap_err()
        .to_string()
        .contains("nothing to update"));
    let e = files::update::<Config>(&store, "site", 1, "", None, Some(b"y".to_vec()));
    assert!(e.await.is_err());
    assert_eq!(store.view(|t| t.configs[&c.id].version), 2);

    // once nothing names version 1 (the service and its history gone), the next update
    // drops it
    crate::manager::control::remove_service(&store, &web.id)
        .await
        .unwrap();
    let u = files::update::<Config>(&store, "site", 0, "", None, Some(b"three".to_vec()))
        .await
        .unwrap();
    assert!(u.rolled.is_empty());
    assert!(store.view(|t| t.configs[&c.id].old_versions.is_empty()));
}

#[tokio::test]
async fn new_data_that_would_not_fit_with_the_versions_still_named_is_refused() {
    let store = Store::in_memory();
    files::create(&store, config("big", &vec![b'a'; 700 << 10]))
        .await
        .unwrap();
    create_service(&store, using("web", "big"), &no_registry())
        .await
        .unwrap();
    // version 1 stays named by web's revision: 1400 KiB with the new data
    let e = files::update::<Config>(&store, "big", 0, "", None, Some(vec![b'b'; 700 << 10]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config 'big' cannot take new data now") && e.contains("(1)"),
        "{e}"
    );
    assert_eq!(
        store.view(|t| t.configs.values().next().unwrap().version),
        1
    );
}
