//! `BlobStore` over one S3 bucket.

use crate::sdk_message;
use crate::sessions::{tenant_of_object, ScopedClients, TenantSessions};
use std::sync::Arc;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use keel_core::ports::BlobStore;
use keel_core::StoreError;

#[derive(Clone)]
pub struct S3Blobs {
    clients: Arc<ScopedClients<Client>>,
    bucket: String,
}

impl S3Blobs {
    /// Every call with `client`'s credentials.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self { clients: Arc::new(ScopedClients::fixed(client)), bucket: bucket.into() }
    }

    /// Each tenant prefix's calls through that tenant's session.
    pub fn with_sessions(sessions: Arc<TenantSessions>, bucket: impl Into<String>) -> Self {
        Self { clients: Arc::new(ScopedClients::new(sessions, crate::s3_client)), bucket: bucket.into() }
    }

    async fn client(&self, key: &str) -> Client {
        self.clients.client(tenant_of_object(key).as_ref()).await
    }

    /// Whether `key` is stored: the first key listed under it is itself when it is.
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let page = self
            .client(key)
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(page.contents().first().and_then(|o| o.key()) == Some(key))
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.client(key)
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.client(key).await.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => {
                let bytes = out.body.collect().await.map_err(|e| StoreError::Backend(e.to_string()))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => Ok(None),
            // A tenant session may list only its own prefix, and S3 answers a
            // missing object with 403 to whoever may not list the bucket: ask
            // the listing whether the object is there before calling it denied.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => match self.exists(key).await? {
                false => Ok(None),
                true => Err(StoreError::Backend(sdk_message(&e))),
            },
            Err(e) => Err(StoreError::Backend(sdk_message(&e))),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client(key)
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self.client(prefix).await.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::Backend(sdk_message(&e)))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        keys.sort();
        Ok(keys)
    }

    async fn purge_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let client = self.client(prefix).await;
        let mut removed = 0;
        // Each round deletes the first page of what is left, until nothing is.
        loop {
            let page = client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send()
                .await
                .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
            let objects = page.versions().iter().map(|v| (v.key(), v.version_id()));
            let markers = page.delete_markers().iter().map(|m| (m.key(), m.version_id()));
            let versions: Vec<(String, Option<String>)> =
                objects.chain(markers).filter_map(|(k, v)| Some((k?.to_string(), v.map(str::to_string)))).collect();
            if versions.is_empty() {
                return Ok(removed);
            }
            // A version id deletes that version for good.
            for (key, version) in versions {
                client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .set_version_id(version)
                    .send()
                    .await
                    .map_err(|e| StoreError::Backend(sdk_message(&e)))?;
                removed += 1;
            }
        }
    }
}
