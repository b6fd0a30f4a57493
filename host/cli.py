def main() -> None:
    print("agentvm")
