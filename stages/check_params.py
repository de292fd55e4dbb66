"""Validate params.yaml as a whole (also keys no stage reads), so a typo never passes silently."""
from cnnlab import params
from cnnlab.outputs import run_stage


def main():
    loaded = params.load()
    print(f"params.yaml: valid; models {', '.join(loaded['models'])} on {loaded['data']['dataset']}")


if __name__ == "__main__":
    run_stage(main)
