"""Data: pretraining corpora from the user's text files to masked batches, and task datasets for fine-tuning.

    sentences.py   split_sentences: English and Chinese sentence splitting (the unit of next-sentence prediction)
    shard_writer.py  prepare_corpus: text / JSONL files -> token shards + manifest
    shard_reader.py  ShardedCorpus: the shards read back, memory-mapped; the manifest; check_tokenizer
    examples.py    NSP pairs or packed sequences built on the fly from a ShardedCorpus
    masking.py     masked-language-model masking of a batch
    classification.py  CSV / TSV / JSONL text-classification files; length-bucketed batches
    catalogue.py   named datasets (rotten_tomatoes, imdb) with fixed, deterministic splits
    tagging.py     CoNLL / BMES tagged sentences, tag-scheme conversion and repair, entity spans

Import from the modules themselves (``from bertforge.data.shard_writer import prepare_corpus``); this package imports
nothing, so loading one stage never pulls in the others.
"""
