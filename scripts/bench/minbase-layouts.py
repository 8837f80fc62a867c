#!/usr/bin/env python3
"""minbase-layouts.py TAR OUT: the rootfs tar TAR as two OCI layouts, OUT/one (one
uncompressed tar layer) and OUT/three (three gzip layers: usr/lib, usr/share, the rest)."""
import gzip, hashlib, io, json, os, sys, tarfile


def layout(out, tars, gzipped):
    """Writes an OCI layout at `out` whose layers are the tar byte strings `tars`."""
    os.makedirs(out + '/blobs/sha256', exist_ok=True)

    def put(b):
        h = hashlib.sha256(b).hexdigest()
        with open(f'{out}/blobs/sha256/{h}', 'wb') as f:
            f.write(b)
        return 'sha256:' + h, len(b)

    layers, diffs = [], []
    for t in tars:
        diffs.append('sha256:' + hashlib.sha256(t).hexdigest())
        blob = gzip.compress(t, 6, mtime=0) if gzipped else t
        d, s = put(blob)
        mt = 'application/vnd.oci.image.layer.v1.tar' + ('+gzip' if gzipped else '')
        layers.append({'mediaType': mt, 'digest': d, 'size': s})
    cd, cs = put(json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {'Cmd': ['/bin/sh']},
                             'rootfs': {'type': 'layers', 'diff_ids': diffs}}).encode())
    md, ms = put(json.dumps({'schemaVersion': 2,
                             'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                             'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                        'digest': cd, 'size': cs},
                             'layers': layers}).encode())
    with open(out + '/index.json', 'w') as f:
        json.dump({'schemaVersion': 2, 'manifests': [{
            'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': md, 'size': ms,
            'annotations': {'org.opencontainers.image.ref.name': 'latest'}}]}, f)
    with open(out + '/oci-layout', 'w') as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    sizes = ', '.join(f"{l['size'] / 1e6:.1f}" for l in layers)
    print(f'{out}: {len(tars)} layers, {sum(map(len, tars)) / 1e6:.1f} MB of tar, blobs {sizes} MB')


tar_path, out = sys.argv[1], sys.argv[2]
with open(tar_path, 'rb') as f:
    layout(out + '/one', [f.read()], False)
parts = [io.BytesIO() for _ in range(3)]
outs = [tarfile.open(fileobj=p, mode='w', format=tarfile.PAX_FORMAT) for p in parts]
with tarfile.open(tar_path) as src:
    for m in src:
        n = m.name.lstrip('./')
        k = 0 if n.startswith('usr/lib/') else 1 if n.startswith('usr/share/') else 2
        outs[k].addfile(m, src.extractfile(m) if m.isreg() else None)
for t in outs:
    t.close()
layout(out + '/three', [p.getvalue() for p in parts], True)
