//! Who and where this instance is, from IMDSv2 (the IMDS seam).

use anyhow::{Context, Result};

/// This instance's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub az: String,
    pub region: String,
}

impl Identity {
    /// Reads the identity from IMDS (honours AWS_EC2_METADATA_SERVICE_ENDPOINT).
    pub async fn from_imds() -> Result<Identity> {
        let imds = aws_config::imds::Client::builder().build();
        let get = |path: &'static str| {
            let imds = imds.clone();
            async move {
                imds.get(path)
                    .await
                    .map(|v| v.as_ref().trim().to_string())
                    .with_context(|| format!("reading {path} from IMDS"))
            }
        };
        Ok(Identity {
            instance_id: get("/latest/meta-data/instance-id").await?,
            az: get("/latest/meta-data/placement/availability-zone").await?,
            region: get("/latest/meta-data/placement/region").await?,
        })
    }
}
