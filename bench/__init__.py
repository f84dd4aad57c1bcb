"""Benchmarks: programs that print tables (torch and abp core only, to run on a bare GPU box)."""
