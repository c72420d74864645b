"""evaluation/sharded"""
