"""Publishing artifacts: push to the Hugging Face Hub, share records for each MLC runtime, a local server in the Hub's layout."""
