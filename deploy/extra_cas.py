"""Copy the CA certificates of one bundle that another lacks into a folder, one per file.

Used by base-image.sh: ``extra_cas.py HOST_BUNDLE IMAGE_BUNDLE FOLDER`` writes
``FOLDER/host-N.crt`` for each certificate in HOST_BUNDLE that is not in
IMAGE_BUNDLE, for ``update-ca-certificates`` in the image to pick up.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def certificates(bundle: Path) -> list[str]:
    """The PEM certificates in ``bundle`` (none when it does not exist)."""
    return _PEM.findall(bundle.read_text(encoding="ascii")) if bundle.is_file() else []


def main(argv: list[str]) -> int:
    """Write the extra certificates; print how many."""
    if len(argv) != 3:
        print("usage: extra_cas.py HOST_BUNDLE IMAGE_BUNDLE FOLDER", file=sys.stderr)
        return 2
    host, image, folder = (Path(arg) for arg in argv)
    known = set(certificates(image))
    extra = [cert for cert in certificates(host) if cert not in known]
    folder.mkdir(parents=True, exist_ok=True)
    for number, cert in enumerate(extra):
        (folder / f"host-{number}.crt").write_text(cert + "\n", encoding="ascii")
    print(f"extra_cas.py: {len(extra)} CA certificate(s) of this host added", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
