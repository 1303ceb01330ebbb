//! The image: config JSON and manifest from a planned stage and its layers.

use crate::{ExecError, LayerRecord};
use imgbuild_cache::Digest;
use imgbuild_cache::oci::{
    Descriptor, Healthcheck, History, ImageConfig, Manifest, RootFs, RunConfig, canonical_digest,
    media_type,
};
use imgbuild_cache::store::Store;
use imgbuild_planner::{Plan, PlannedStage};

/// The stored image.
#[derive(Clone, Debug)]
pub struct ImageOutput {
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
}

/// Writes the config and manifest of `stage` over `layers` into the store.
pub fn assemble(
    store: &Store,
    plan: &Plan,
    stage: &PlannedStage,
    layers: &[LayerRecord],
    epoch: u64,
) -> Result<ImageOutput, ExecError> {
    let created = rfc3339(epoch);
    let c = &stage.config;
    let config = ImageConfig {
        created: Some(created.clone()),
        author: c.author.clone(),
        architecture: plan.platform.architecture.clone(),
        os: plan.platform.os.clone(),
        variant: plan.platform.variant.clone().unwrap_or_default(),
        config: RunConfig {
            user: c.user.clone(),
            exposed_ports: c.exposed_ports.clone(),
            env: c.env.clone(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            volumes: c.volumes.clone(),
            working_dir: c.working_dir.clone(),
            labels: c.labels.clone(),
            stop_signal: c.stop_signal.clone(),
            healthcheck: c.healthcheck.as_ref().map(|h| Healthcheck {
                test: h.test.clone(),
                interval: h.interval,
                timeout: h.timeout,
                start_period: h.start_period,
                start_interval: h.start_interval,
                retries: h.retries as i64,
            }),
            on_build: c.onbuild.clone(),
            shell: c.shell.clone().unwrap_or_default(),
            ..RunConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id).collect(),
        },
        history: stage
            .history
            .iter()
            .map(|h| History {
                created: Some(created.clone()),
                created_by: h.created_by.clone(),
                author: String::new(),
                comment: h.comment.clone(),
                empty_layer: h.empty_layer,
            })
            .collect(),
        ..ImageConfig::default()
    };
    let with_layers = config.history.iter().filter(|h| !h.empty_layer).count();
    if with_layers != layers.len() {
        return Err(ExecError::Other(format!(
            "internal error: {} layers but {with_layers} history entries with a layer",
            layers.len()
        )));
    }
    let (config_bytes, config_digest) = canonical_digest(&config);
    store.put_blob_bytes(&config_bytes)?;
    let manifest = Manifest::oci(
        Descriptor::new(
            media_type::OCI_CONFIG,
            config_digest,
            config_bytes.len() as u64,
        ),
        layers
            .iter()
            .map(|l| Descriptor::new(&l.media_type, l.digest, l.size))
            .collect(),
    );
    let (manifest_bytes, manifest_digest) = canonical_digest(&manifest);
    store.put_blob_bytes(&manifest_bytes)?;
    Ok(ImageOutput {
        manifest: manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config: config_digest,
    })
}

/// RFC 3339 UTC time of a Unix timestamp (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
