import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from matryoshka.datasets import data_path, load_flickr_retrieval
from matryoshka.errors import MatryoshkaError
from matryoshka.eval.tasks import BeirTask, StsTask, parse_task

STS_SAMPLE = 100


@pytest.fixture(scope="module")
def sts_sample():
    return StsTask(limit=STS_SAMPLE)


def test_sts_prefix_scores_match_an_independent_slice_and_renormalise(encoder, sts_sample):
    """The task (cache + truncate) against sentence-transformers output sliced and renormalised by hand."""
    blocks = sts_sample.embed(encoder)
    raw_first = encoder.model.encode(sts_sample.pairs.first, convert_to_numpy=True)
    raw_second = encoder.model.encode(sts_sample.pairs.second, convert_to_numpy=True)
    for dim in (384, 64, 8):
        a, b = raw_first[:, :dim], raw_second[:, :dim]
        cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        scores = sts_sample.score(blocks, dim)
        assert scores["spearman"] == pytest.approx(100 * spearmanr(cosine, sts_sample.gold)[0], abs=0.01)
        assert scores["pearson"] == pytest.approx(100 * pearsonr(cosine, sts_sample.gold)[0], abs=0.01)
    assert sts_sample.score(blocks, 384)["spearman"] > 80  # a real model on real pairs


def test_sts_similarity_gap_by_hand(sts_sample):
    rng = np.random.default_rng(3)
    first, second = rng.normal(size=(STS_SAMPLE, 6)), rng.normal(size=(STS_SAMPLE, 6))
    blocks = {"first": first, "second": second}

    def cosines(a, b):
        a, b = a[:, :2], b[:, :2]
        return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    related = sts_sample.gold >= 4
    expected = (
        cosines(first, second)[related].mean() - cosines(first, second[sts_sample.random_partner]).mean()
    )
    assert related.sum() > 10
    assert sts_sample.similarity_gap(blocks, 2) == pytest.approx(expected, abs=1e-6)


def test_beir_scores_match_trec_eval_on_a_hand_ranked_run(encoder, beir_dir):
    import pytrec_eval

    task = BeirTask(beir_dir)
    blocks = task.embed(encoder)
    for dim in (384, 16):
        q, c = blocks["queries"][:, :dim], blocks["corpus"][:, :dim]
        sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            c / np.linalg.norm(c, axis=1, keepdims=True)
        ).T
        run = {
            qid: {doc: float(s) for doc, s in zip(task.data.doc_ids, row, strict=True)}
            for qid, row in zip(task.data.query_ids, sims, strict=True)
        }
        measures = pytrec_eval.RelevanceEvaluator(task.data.qrels, {"ndcg_cut.10", "recall.10"}).evaluate(run)
        scores = task.score(blocks, dim)
        assert scores["ndcg@10"] == pytest.approx(
            100 * np.mean([m["ndcg_cut_10"] for m in measures.values()]), abs=1e-4
        )
        assert scores["recall@10"] == pytest.approx(
            100 * np.mean([m["recall_10"] for m in measures.values()]), abs=1e-4
        )
    assert task.score(blocks, 384)["ndcg@10"] > 80  # paraphrase partners are easy to find among 40 docs


def test_beir_similarity_gap_by_hand(beir_dir):
    task = BeirTask(beir_dir)
    rng = np.random.default_rng(5)
    blocks = {"queries": rng.normal(size=(10, 4)), "corpus": rng.normal(size=(40, 4))}
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in blocks.items()}
    row = {doc: i for i, doc in enumerate(task.data.doc_ids)}
    related = [
        unit["queries"][q] @ unit["corpus"][row[doc]]
        for q, qid in enumerate(task.data.query_ids)
        for doc in task.data.qrels[qid]
    ]
    unrelated = np.sum(unit["queries"] * unit["corpus"][task.random_docs], 1)
    assert len(related) == 11
    assert task.similarity_gap(blocks, 4) == pytest.approx(np.mean(related) - unrelated.mean(), abs=1e-6)


def test_parse_task(beir_dir):
    assert parse_task("stsb").name == "stsb:test"
    assert parse_task("stsb:dev").name == "stsb:dev"
    assert parse_task(f"beir:{beir_dir}").name == f"beir:{beir_dir.name}"
    assert len(parse_task("beir:scifact").data.doc_ids) == 5183  # found under the data root
    assert parse_task("flickr8k").name == "flickr8k:heldout"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("glue", "unknown task 'glue'"),
        ("beir:", "task beir needs a directory"),
        ("beir:no-such-set", "missing data: no BEIR directory 'no-such-set'"),
        ("stsb:valid", "unknown STS-B split 'valid'"),
        ("flickr8k:test", "unknown Flickr8k split 'test'"),
    ],
)
def test_bad_task_names(spec, message):
    with pytest.raises(MatryoshkaError, match=message):
        parse_task(spec)


def test_beir_directory_without_qrels_is_reported(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    with pytest.raises(MatryoshkaError, match=r"missing queries\.jsonl"):
        parse_task(f"beir:{tmp_path}")


def test_flickr_retrieval_is_each_held_out_images_other_captions():
    """Read independently from Flickr8k.token.txt: held-out images are those not in the train list; a
    query is an image's caption #0, its relevant documents are captions #1-#4 of the same image."""
    train = set(data_path("flickr8k_caption_pairs", "Flickr_8k.trainImages.txt").read_text().split())
    captions: dict[str, list[str]] = {}
    for line in data_path("flickr8k_caption_pairs", "Flickr8k.token.txt").read_text().splitlines():
        key, text = line.replace("\t", " ", 1).split(" ", 1)
        image = key.split("#")[0]
        if image not in train:
            captions.setdefault(image, []).append(" ".join(text.split()).removesuffix(" ."))
    data = load_flickr_retrieval()
    assert len(data.query_ids) == len(captions) == 2092 and len(data.doc_ids) == 8367
    image = "1056249424_ef2a2e041c.jpg"
    assert image not in train and captions[image][0] == "The children are playing in the water"
    query = data.query_ids.index(f"{image}#0")
    assert data.query_texts[query] == captions[image][0]
    assert data.qrels[f"{image}#0"] == {f"{image}#{n}": 1 for n in range(1, 5)}
    docs = dict(zip(data.doc_ids, data.doc_texts, strict=True))
    assert [docs[f"{image}#{n}"] for n in range(1, 5)] == captions[image][1:]
    assert not set(data.query_ids) & set(docs)


def test_flickr_task_scores_a_perfect_ranking_one():
    """Vectors that give every caption its image's own random unit vector rank the 4 relevant captions
    first (cosine 1 against at most ~0.6 for another image's vector at 64 dims)."""
    task = parse_task("flickr8k")
    images = {qid.split("#")[0]: n for n, qid in enumerate(task.data.query_ids)}
    per_image = np.random.default_rng(0).standard_normal((len(images), 64)).astype(np.float32)
    per_image /= np.linalg.norm(per_image, axis=1, keepdims=True)
    blocks = {
        "queries": per_image,
        "corpus": per_image[[images[doc.split("#")[0]] for doc in task.data.doc_ids]],
    }
    scores = task.score(blocks, 64)
    assert scores["ndcg@10"] == 100.0 and scores["recall@10"] == 100.0 and scores["mrr@10"] == 100.0
