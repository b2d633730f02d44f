"""Run a GOLD-NAS search.

    python pipelines/search.py                         # Ray Train on an embedded local Ray
    ray job submit --working-dir . -- python pipelines/search.py --workers 2
    python pipelines/search.py --local                 # in this process, no Ray
    python pipelines/search.py --local --smoke-test    # a run of seconds
    python pipelines/search.py --local --config cfg.yaml --set search.lambda0=0.02
    python pipelines/search.py --resume --out runs/s1 --workers 2   # continue runs/s1, or start it there

--resume continues the search in --out; on a folder with no search in it yet (missing, empty,
or left by a start stopped before its first checkpoint) it starts one from the other flags and
says so in its first line, so the same command is a job's first try and every retry.

Writes records.json, genotypes/, history.parquet and checkpoints/ under --out.
"""
from __future__ import annotations

import argparse
import sys

from goldnas_ray import cli
from goldnas_ray.cli.outputs import output_folder, resumes
from goldnas_ray.cli.process import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None,
                   help="output folder; must not exist or be empty unless --resume "
                        "(default: runs/search-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search stored in --out (none there yet: start it)")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray")
    cli.add_common_flags(p)
    cli.add_search_flags(p)
    cli.add_worker_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        out = output_folder(args.out, args.resume, "search")
        resume = args.resume and resumes(out, "search")  # no search there yet: a new one, from the flags
        cfg = None if resume else cli.search_config(args)
        if args.local:
            cli.run_search_locally(cfg, out, args, resume)
        else:
            cli.run_search_on_ray(cfg, out, args, resume)

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
