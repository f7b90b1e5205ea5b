"""The end-to-end acceptance run (``make e2e``): traffic with every fraud scenario and planted bad records,
streamed through bronze/silver/gold while the pipeline is SIGKILLed and the event log goes down, models trained
and promoted, scored traffic through the stream and the API, then conservation, gold totals, time travel and
the API's answers checked (``invariants``) and summarised on one page."""
