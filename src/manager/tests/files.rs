//! Secrets and configs in the store: made once under a name, removed only while no
//! service uses them, references resolved by name (an unknown one refused, naming its
//! field), and secrets refused until the store is sealed.

use super::*;
use crate::manager::control::create_service;
use crate::manager::files;

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
async fn references_are_resolved_by_name_and_not_run_yet() {
    let store = Store::in_memory();
    let e = create_service(&store, using("web", "nope"), &no_registry())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("task.container.configs[0].source: config not found: nope"),
        "{e}"
    );
    files::create(&store, config("site", b"hello"))
        .await
        .unwrap();
    let e = create_service(&store, using("web", "site"), &no_registry())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not supported yet"), "{e}");
    assert!(store.view(|t| t.services.is_empty()));
}

#[tokio::test]
async fn secrets_are_refused_until_the_store_is_sealed() {
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
    let e = files::create(&store, s).await.unwrap_err().to_string();
    assert!(e.contains("secrets are not supported yet"), "{e}");
    assert!(store.view(|t| t.secrets.is_empty()));
}
