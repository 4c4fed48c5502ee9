//! Supervised service instances and the release each `service` environment serves.

use super::tables::{META, SERVICE_INSTANCES, SERVICE_ROUTES};
use super::{Store, codec, quarantine};
use crate::core::error::Result;
use crate::service::{InstanceRecord, RouteRecord};
use redb::{ReadableDatabase, ReadableTable};

impl Store {
    /// A new instance id.
    pub async fn next_service_instance_id(&self) -> Result<u64> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let last: u64 = match meta.get("service_instance_seq")? {
                Some(v) => codec::decode(META, v.value())?,
                None => 0,
            };
            meta.insert(
                "service_instance_seq",
                codec::encode(&(last + 1)).as_slice(),
            )?;
            Ok(last + 1)
        })
        .await
    }

    pub async fn put_service_instance(&self, record: InstanceRecord) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(SERVICE_INSTANCES)?
                .insert(record.id, codec::encode(&record).as_slice())?;
            Ok(())
        })
        .await
    }

    pub async fn delete_service_instance(&self, id: u64) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(SERVICE_INSTANCES)?.remove(id)?;
            Ok(())
        })
        .await
    }

    /// Every recorded instance; one that does not decode is left out (and logged).
    pub async fn service_instances(&self) -> Result<Vec<InstanceRecord>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SERVICE_INSTANCES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (id, v) = item?;
                if let Some(r) = quarantine::decode_listed(SERVICE_INSTANCES, id.value(), v.value())
                {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn put_service_route(&self, route: RouteRecord) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(SERVICE_ROUTES)?.insert(
                (route.project.as_str(), route.environment.as_str()),
                codec::encode(&route).as_slice(),
            )?;
            Ok(())
        })
        .await
    }

    pub async fn delete_service_route(&self, project: &str, environment: &str) -> Result<()> {
        let (project, environment) = (project.to_string(), environment.to_string());
        self.write(move |tx| {
            tx.open_table(SERVICE_ROUTES)?
                .remove((project.as_str(), environment.as_str()))?;
            Ok(())
        })
        .await
    }

    pub async fn service_routes(&self) -> Result<Vec<RouteRecord>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SERVICE_ROUTES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (key, v) = item?;
                let (project, environment) = key.value();
                if let Some(r) = quarantine::decode_listed(
                    SERVICE_ROUTES,
                    format!("{project}/{environment}"),
                    v.value(),
                ) {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }
}
