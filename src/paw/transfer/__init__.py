"""Pipeline step 3: move a LoRA adapter from one base LLM to another (`paw transfer`)."""

from paw.transfer.api import METHODS, TransferResult, format_report_table, transfer_adapter

__all__ = ["METHODS", "TransferResult", "format_report_table", "transfer_adapter"]
