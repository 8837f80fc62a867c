//! A minimal CRI client: the kubelet's `ImageService.PullImage` (runtime.v1), which makes
//! containerd's CRI plugin pull with the `cri.*` snapshot labels, and `RemoveImage`, which the
//! kubelet's image garbage collection calls.

use std::path::Path;

#[allow(
    clippy::all,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("runtime.v1");
}

/// Pulls `image` through containerd's CRI plugin on `socket`; returns the image ID.
pub fn pull_image(socket: &Path, image: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = overlaybd_api::unix_channel(socket).await?;
        let mut c = pb::image_service_client::ImageServiceClient::new(ch);
        let r = c
            .pull_image(pb::PullImageRequest {
                image: Some(pb::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                auth: None,
            })
            .await
            .map_err(|s| anyhow::anyhow!("PullImage {image}: {} ({:?})", s.message(), s.code()))?;
        Ok(r.into_inner().image_ref)
    })
}

/// Removes `image` (an ID or a reference) through the CRI plugin, with every name it has, as
/// the kubelet's image garbage collection does.
pub fn remove_image(socket: &Path, image: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = overlaybd_api::unix_channel(socket).await?;
        let mut c = pb::image_service_client::ImageServiceClient::new(ch);
        c.remove_image(pb::RemoveImageRequest {
            image: Some(pb::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| anyhow::anyhow!("RemoveImage {image}: {} ({:?})", s.message(), s.code()))?;
        Ok(())
    })
}
