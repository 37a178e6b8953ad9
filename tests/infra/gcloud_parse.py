"""Parse gcloud command lines with gcloud's own argument parser (run with gcloud's Python).

A regular expression over ``--help`` accepts any flag the page mentions (``--attributes`` is in
the help of ``--clear-attributes``); the parser accepts only the command's real flag set, with
its mutual exclusions, choices and value types. Nothing runs: each line is parsed, not executed.
Usage: CLOUDSDK_PYTHON gcloud_parse.py SDK_ROOT < JSON list of argv lists (without "gcloud")
Prints a JSON list, one ``{"command": [...], "error": str | null}`` per line.
"""

import contextlib
import io
import json
import sys


def main(sdk_root: str) -> None:
    # The same import path gcloud's own launcher (lib/gcloud.py) sets up.
    sys.path[:0] = [f"{sdk_root}/lib/third_party", f"{sdk_root}/lib"]
    from googlecloudsdk import gcloud_main
    from googlecloudsdk.calliope import parser_extensions
    from googlecloudsdk.core import exceptions, log, properties
    from googlecloudsdk.core.configurations import named_configs

    errors = []
    log.error = lambda message, *args, **kwargs: errors.append(message % args if args else message)
    parser_extensions.ArgumentParser.ReportErrorMetrics = lambda *args, **kwargs: None
    parser = gcloud_main.CreateCLI([])._CLI__parser  # what CLI.Execute parses with before running
    results = []
    for argv in json.load(sys.stdin):
        errors.clear()
        command = None
        # As CLI.Execute does: flags such as --project are properties for this invocation only.
        named_configs.FLAG_OVERRIDE_STACK.PushFromArgs(argv)
        properties.VALUES.PushInvocationValues()
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                namespace = parser.parse_args(argv)
            command = namespace._GetCommand().GetPath()[1:]
        except SystemExit:
            errors.append("gcloud's parser refused it")  # after any message it logged
        except exceptions.Error as error:  # a flag value gcloud cannot resolve
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            properties.VALUES.PopInvocationValues()
            named_configs.FLAG_OVERRIDE_STACK.Pop()
        results.append({"command": command, "error": errors[0] if errors else None})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
