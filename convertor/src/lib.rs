//! OCI image → overlaybd image (not yet built): one ext4 diff per layer applied in user space,
//! commit, ZFile compression with the integrity table, push, the dedup database, and trace
//! recording into an acceleration layer.
