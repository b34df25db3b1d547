"""Start-up time of the command-line entry points, side by side with a bare ``python -c pass``.

Each command runs ``--repeats`` times, interleaved (one of each per round, so a busy machine slows
all alike); the table shows the median wall time, the median ratio to ``python -c pass`` of the same
round, and whether torch was imported. Target (issue 11): ``convert --help`` and ``ircap --help``
under 0.5 s on a 2-core machine, without torch; every other command's ``--help`` without torch too.

Example:
    python benchmarks/startup.py --repeats 7
"""
import argparse
import re
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "convert --help": ["-m", "open_clip_thermal.convert", "--help"],
    "ircap --help": ["-m", "open_clip_thermal.ircap", "--help"],
    "ircap caption --help": ["-m", "open_clip_thermal.ircap", "caption", "--help"],
    "benchmark --help": ["-m", "open_clip_thermal.benchmark", "--help"],
    "train --help": ["-m", "open_clip_thermal.train", "--help"],
    "quickstart --help": ["-m", "open_clip_thermal.quickstart", "--help"],
    "synthetic --help": ["-m", "open_clip_thermal.synthetic", "--help"],
    "classify --help": ["-m", "open_clip_thermal.classify", "--help"],
    "reproduce --help": ["-m", "open_clip_thermal.reproduce", "--help"],
    "import open_clip_thermal": ["-c", "import open_clip_thermal"],
    "import open_clip_thermal, open_clip": ["-c", "import open_clip_thermal, open_clip"],
}


def _seconds(args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _imports_torch(args) -> bool:
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    return any(re.search(r"\|\s*torch$", line.rstrip()) for line in out.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (each runs every command once)")
    args = parser.parse_args()
    times = {name: [] for name in COMMANDS}
    ratios = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        round_times = {name: _seconds(cmd) for name, cmd in COMMANDS.items()}
        for name, seconds in round_times.items():
            times[name].append(seconds)
            ratios[name].append(seconds / round_times["python -c pass"])
    print(f"{'command':40s} {'median s':>9s} {'x pass':>7s}  torch")
    for name, cmd in COMMANDS.items():
        print(f"{name:40s} {statistics.median(times[name]):9.2f} {statistics.median(ratios[name]):7.1f}  "
              f"{'yes' if _imports_torch(cmd) else 'no'}")


if __name__ == "__main__":
    main()
