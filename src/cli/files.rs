//! `shoal secret …` and `shoal config …`, with Docker's verbs, flags and output. A
//! secret's data is read from a file or stdin and never printed; a config's is shown by
//! `inspect`, as Docker shows it.

use std::io::Read;
use std::process::ExitCode;

use base64::Engine as _;
use clap::Subcommand;
use serde_json::{json, Value};
use shoal_proto::*;

use super::client::{control, joined, refusal, Ctl};
use super::output::{self, Item, ListFlags, Listing};
use super::util::remove_each;
use super::words::{self, Words};
use super::Globals;
use crate::spec::docker::{ago, short_id, time};
use crate::spec::files::{MAX_CONFIG_BYTES, MAX_SECRET_BYTES};

#[derive(Subcommand)]
pub enum FileCmd {
    /// Create one from a file, or from stdin with `-`.
    Create {
        /// KEY=VALUE
        #[arg(short, long = "label")]
        label: Vec<String>,
        name: String,
        /// A file, or `-` for stdin.
        file: String,
    },
    /// A new version of the data (the services that use it roll to it under their
    /// update settings), or new labels.
    Update {
        /// KEY=VALUE: replaces the labels.
        #[arg(short, long = "label")]
        label: Vec<String>,
        name: String,
        /// The new data: a file, or `-` for stdin (none: the labels alone).
        file: Option<String>,
    },
    /// List them.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// Show them in detail (JSON).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove them (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Which of the two objects a command is about.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
    fn max(self) -> usize {
        match self {
            Kind::Secret => MAX_SECRET_BYTES,
            Kind::Config => MAX_CONFIG_BYTES,
        }
    }
}

/// What lists and inspect show of either.
struct Shown {
    id: String,
    meta: Option<Meta>,
    annotations: Annotations,
    data: Option<Vec<u8>>,
}

impl From<Secret> for Shown {
    fn from(s: Secret) -> Shown {
        let spec = s.spec.unwrap_or_default();
        Shown {
            id: s.id,
            meta: s.meta,
            annotations: spec.annotations.unwrap_or_default(),
            data: None,
        }
    }
}

impl From<Config> for Shown {
    fn from(c: Config) -> Shown {
        let spec = c.spec.unwrap_or_default();
        Shown {
            id: c.id,
            meta: c.meta,
            annotations: spec.annotations.unwrap_or_default(),
            data: Some(spec.data),
        }
    }
}

impl Shown {
    /// Docker's inspect JSON.
    fn inspect(&self) -> Value {
        let m = self.meta.unwrap_or_default();
        let mut spec = json!({"Name": self.annotations.name, "Labels": self.annotations.labels});
        if let Some(d) = &self.data {
            spec["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(d));
        }
        json!({
            "ID": self.id,
            "Version": {"Index": m.version},
            "CreatedAt": time(m.created_at_ms),
            "UpdatedAt": time(m.updated_at_ms),
            "Spec": spec,
        })
    }
}

/// Reads the data: at most `max` bytes (one more is refused before anything is sent).
fn read_data(file: &str, max: usize, word: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    let limit = max as u64; // a byte past the largest allowed tells it is too big
    let n = if file == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut data)
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut data))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{file}: {e}")))
    }?;
    if n >= max {
        anyhow::bail!(
            "FILE {file}: a {word}'s data must be less than {} KiB",
            max / 1024
        );
    }
    Ok(data)
}

pub async fn run(g: &Globals, kind: Kind, c: FileCmd) -> anyhow::Result<ExitCode> {
    let mut ctl = control(g).await?;
    match c {
        FileCmd::Create { label, name, file } => {
            let labels = crate::spec::units::labels(&label)
                .map_err(|(l, e)| super::flags::bad_value("--label", &l, e))?;
            let data = read_data(&file, kind.max(), kind.word())?;
            let annotations = Some(Annotations { name, labels });
            let id = match kind {
                Kind::Secret => {
                    let spec = SecretSpec { annotations, data };
                    crate::spec::files::secret(&spec).map_err(|e| Words::File.say(&e))?;
                    ctl.create_secret(CreateSecretRequest { spec: Some(spec) })
                        .await
                        .map_err(|e| words::refusal(e, Words::File))?
                        .into_inner()
                        .id
                }
                Kind::Config => {
                    let spec = ConfigSpec { annotations, data };
                    crate::spec::files::config(&spec).map_err(|e| Words::File.say(&e))?;
                    ctl.create_config(CreateConfigRequest { spec: Some(spec) })
                        .await
                        .map_err(|e| words::refusal(e, Words::File))?
                        .into_inner()
                        .id
                }
            };
            println!("{id}");
        }
        FileCmd::Update { label, name, file } => {
            if label.is_empty() && file.is_none() {
                anyhow::bail!(
                    "nothing to update: give the {}'s new data (FILE or -), or --label",
                    kind.word()
                );
            }
            let labels = crate::spec::units::labels(&label)
                .map_err(|(l, e)| super::flags::bad_value("--label", &l, e))?;
            let data = match &file {
                Some(f) => read_data(f, kind.max(), kind.word())?,
                None => Vec::new(),
            };
            let annotations = Some(Annotations {
                name: name.clone(),
                labels,
            });
            let labels_set = !label.is_empty();
            let checked = |e: crate::spec::SpecErrors| Words::File.say(&e);
            let r = match kind {
                Kind::Secret => {
                    let spec = SecretSpec { annotations, data };
                    if file.is_some() {
                        crate::spec::files::secret(&spec).map_err(checked)?;
                    }
                    ctl.update_secret(UpdateSecretRequest {
                        id_or_name: name,
                        spec: Some(spec),
                        labels_set,
                        ..Default::default()
                    })
                    .await
                }
                Kind::Config => {
                    let spec = ConfigSpec { annotations, data };
                    if file.is_some() {
                        crate::spec::files::config(&spec).map_err(checked)?;
                    }
                    ctl.update_config(UpdateConfigRequest {
                        id_or_name: name,
                        spec: Some(spec),
                        labels_set,
                        ..Default::default()
                    })
                    .await
                }
            }
            .map_err(|e| words::refusal(e, Words::File))?
            .into_inner();
            println!("{}", r.id);
            if !r.rolled.is_empty() {
                eprintln!(
                    "version {} of its data: {} roll{} to it",
                    r.data_version,
                    r.rolled.join(", "),
                    if r.rolled.len() == 1 { "s" } else { "" }
                );
            }
        }
        FileCmd::Ls { list } => {
            let mut all = listed(&mut ctl, kind).await?;
            all.sort_by(|a, b| a.annotations.name.cmp(&b.annotations.name));
            let now = chrono::Utc::now().timestamp_millis();
            let items = all
                .iter()
                .map(|s| {
                    let m = s.meta.unwrap_or_default();
                    let json = json!({
                        "ID": short_id(&s.id),
                        "Name": s.annotations.name,
                        "Driver": "",
                        "CreatedAt": ago((now - m.created_at_ms) / 1000),
                        "UpdatedAt": ago((now - m.updated_at_ms) / 1000),
                        "Labels": s.annotations.labels,
                    });
                    let cols: &[&str] = match kind {
                        Kind::Secret => &["ID", "Name", "Driver", "CreatedAt", "UpdatedAt"],
                        Kind::Config => &["ID", "Name", "CreatedAt", "UpdatedAt"],
                    };
                    Item::of(json, &s.id, cols)
                })
                .collect();
            let header: &[&str] = match kind {
                Kind::Secret => &["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
                Kind::Config => &["ID", "NAME", "CREATED", "UPDATED"],
            };
            output::print(&list, Listing { header, items })?;
        }
        FileCmd::Inspect { names } => {
            let mut out = Vec::new();
            for what in names {
                let req = GetRequest { id_or_name: what };
                let shown: Shown = match kind {
                    Kind::Secret => ctl
                        .get_secret(req)
                        .await
                        .map_err(refusal)?
                        .into_inner()
                        .into(),
                    Kind::Config => ctl
                        .get_config(req)
                        .await
                        .map_err(refusal)?
                        .into_inner()
                        .into(),
                };
                out.push(shown.inspect());
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        FileCmd::Rm { names } => {
            return Ok(remove_each(names, |r| {
                let mut ctl = ctl.clone();
                async move {
                    match kind {
                        Kind::Secret => ctl.remove_secret(r).await.map(|_| ()),
                        Kind::Config => ctl.remove_config(r).await.map(|_| ()),
                    }
                }
            })
            .await);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn listed(ctl: &mut Ctl, kind: Kind) -> anyhow::Result<Vec<Shown>> {
    let mut all: Vec<Shown> = Vec::new();
    match kind {
        Kind::Secret => {
            let parts = ctl.list_secrets(ListRequest::default()).await;
            joined(parts, |p| {
                all.extend(p.secrets.into_iter().map(Shown::from))
            })
            .await?;
        }
        Kind::Config => {
            let parts = ctl.list_configs(ListRequest::default()).await;
            joined(parts, |p| {
                all.extend(p.configs.into_iter().map(Shown::from))
            })
            .await?;
        }
    }
    Ok(all)
}
