//! `shoal image …` and `shoal login`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use shoal_runtime::image::store::display_tag;
use shoal_runtime::image::{Credentials, ImageStore, PullOptions};

use super::output::{self, Item, ListFlags, Listing};
use super::util::human_size;
use crate::spec::docker::ago;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Pull an image from a registry.
    Pull { image: String },
    /// Import a `docker save` tarball or an OCI image layout (directory or tar).
    Import { file: PathBuf },
    /// Write images to a tar (an OCI layout with Docker's manifest.json).
    Save {
        #[arg(short, long)]
        output: PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        list: ListFlags,
    },
    /// Remove images (refused while a container uses them).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove layers and blobs that no image uses.
    Prune,
}

#[derive(Args)]
pub struct LoginArgs {
    /// Registry host[:port].
    registry: String,
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    #[arg(short, long)]
    password: Option<String>,
}

pub fn credentials_file(data_root: &Path) -> PathBuf {
    data_root.join("registry-auth.json")
}

pub fn pull_options(data_root: &Path, insecure: &[String]) -> PullOptions {
    PullOptions {
        auth: None,
        credentials_file: Some(credentials_file(data_root)),
        insecure_registries: insecure.to_vec(),
    }
}

pub async fn run(data_root: &Path, insecure: &[String], cmd: ImageCmd) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(data_root)
        .with_context(|| format!("opening the image store under {}", data_root.display()))?;
    match cmd {
        ImageCmd::Pull { image } => {
            let p = store
                .pull(&image, &pull_options(data_root, insecure))
                .await?;
            if let Some(d) = p.image.repo_digests.first() {
                println!("Digest: {}", d.rsplit_once('@').map(|x| x.1).unwrap_or(d));
            }
            println!(
                "Status: {} for {}",
                if p.fetched_blobs == 0 {
                    "Image is up to date"
                } else {
                    "Downloaded newer image"
                },
                image
            );
        }
        ImageCmd::Import { file } => {
            for img in store.import(&file).await? {
                match img.repo_tags.first() {
                    Some(t) => println!("Loaded image: {}", display_tag(t)),
                    None => println!("Loaded image ID: {}", img.id),
                }
            }
        }
        ImageCmd::Save { output, images } => {
            store.save(&images, &output)?;
            // the archive is the user's, not the data root's: the mode they would expect
            std::fs::set_permissions(
                &output,
                std::os::unix::fs::PermissionsExt::from_mode(super::user_file_mode()),
            )?
        }
        ImageCmd::Ls { list } => {
            let now = chrono::Utc::now().timestamp();
            let mut items = Vec::new();
            for img in store.list() {
                let tags: Vec<(String, String)> = if img.repo_tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    img.repo_tags
                        .iter()
                        .map(|t| display_tag(t))
                        .map(|t| match t.rsplit_once(':') {
                            Some((r, tag)) => (r.to_string(), tag.to_string()),
                            None => (t, "<none>".into()),
                        })
                        .collect()
                };
                for (repo, tag) in tags {
                    let id = img.id.short().to_string();
                    // the digest the repository last gave it (Docker's `--digests`)
                    let digest = img
                        .repo_digests
                        .iter()
                        .filter_map(|d| d.split_once('@'))
                        .find(|(name, _)| shoal_runtime::image::reference::familiar(name) == repo)
                        .map_or("<none>", |(_, d)| d);
                    let json = json!({"Repository": repo, "Tag": tag, "Digest": digest, "ID": id, "CreatedSince": ago(now - img.stored_at as i64), "Size": human_size(img.size())});
                    items.push(Item::of(
                        json,
                        id,
                        &["Repository", "Tag", "ID", "CreatedSince", "Size"],
                    ));
                }
            }
            let header = &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"];
            output::print(&list, Listing { header, items })?;
        }
        ImageCmd::Rm { images } => {
            let users = shoal_runtime::container::image_users_at(data_root);
            let mut failed = false;
            for i in images {
                match store.remove(&i, &|d| users.get(d).cloned()) {
                    Ok(msgs) => msgs.iter().for_each(|m| println!("{m}")),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            store.gc().await?;
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCmd::Prune => {
            let n = store.gc().await?;
            println!("Removed {n} unused layers and blobs");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn login(
    data_root: &Path,
    insecure: &[String],
    a: LoginArgs,
) -> anyhow::Result<ExitCode> {
    let username = match a.username {
        Some(u) => u,
        None => bail!("--username is required"),
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut l = String::new();
            std::io::stdin().lock().read_line(&mut l)?;
            l.trim_end_matches(['\r', '\n']).to_string()
        }
        (None, false) if !std::io::stdin().is_terminal() => {
            bail!("no password: use --password-stdin")
        }
        (None, false) => bail!("no password: use --password-stdin or --password"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let auth = shoal_runtime::image::RegistryAuth::Basic {
        username: username.clone(),
        password: password.clone(),
    };
    shoal_runtime::image::pull::verify_login(&a.registry, &auth, insecure).await?;
    Credentials::store(
        &credentials_file(data_root),
        &a.registry,
        &username,
        &password,
    )?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}
