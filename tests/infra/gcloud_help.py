"""Print ``gcloud PATH --help`` for many commands from one gcloud process (run with gcloud's Python).

Starting gcloud costs about a second per call; rendering a help page inside one already-started
CLI costs a tenth of that. Each argument after the marker is one command path ("functions
deploy"); each page is followed by the marker, and a command gcloud does not know gives an empty page.
Usage: CLOUDSDK_PYTHON gcloud_help.py SDK_ROOT MARKER "functions deploy" "run deploy" ...
"""

import sys


def main(sdk_root: str, marker: str, paths: list[str]) -> None:
    # The same import path gcloud's own launcher (lib/gcloud.py) sets up.
    sys.path[:0] = [f"{sdk_root}/lib/third_party", f"{sdk_root}/lib"]
    from googlecloudsdk import gcloud_main
    from googlecloudsdk.core import log

    cli = gcloud_main.CreateCLI([])
    for path in paths:
        try:
            cli.Execute([*path.split(), "--help"])
        except SystemExit:
            pass  # --help ends with exit 0; an unknown command with exit 2 (and an empty page)
        log.out.flush()
        sys.stdout.write(marker)
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
