"""Diversity-based selection on embeddings: k-center greedy (core-set), k-means++ (BADGE) and the
learning-loss combinations (`hardest_per_cluster`, `kmeans_plus_plus_loss_weighted`) that the
strategies and the triage queue share.

Both work from a distance-to-nearest-center vector of length N that is updated
one center at a time, so memory is O(N * D) for the embeddings plus O(N), never
an N x N matrix. Each runs as one compiled TensorFlow loop.
"""

from __future__ import annotations

import heapq

import numpy as np
import tensorflow as tf
from keras import ops

__all__ = [
    "best_per_cluster",
    "finite_labeled",
    "hardest_per_cluster",
    "k_center_greedy",
    "kmeans",
    "kmeans_plus_plus_gradients",
    "kmeans_plus_plus_loss_weighted",
    "loss_rank_weights",
    "nearest_center",
    "squared_distances_to_set",
    "typical_per_cluster",
    "typicality",
    "typiclust_picks",
]

# Lloyd iterations of `kmeans` unless told otherwise (LearningLossClusters and the triage queue).
KMEANS_ITERATIONS = 10


def squared_distances_to_set(embeddings, centers, block_size: int = 1024) -> np.ndarray:
    """Squared Euclidean distance from each embedding to its nearest center.

    Computed in blocks of `block_size` centers (memory O(N * block_size)).

    Args:
        embeddings: `(N, D)` array.
        centers: `(M, D)` array, `M >= 1`.
        block_size: centers per block.

    Example:

    >>> squared_distances_to_set(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0]])).tolist()
    [0.0, 25.0]
    """
    embeddings = ops.convert_to_tensor(embeddings, "float32")
    centers = ops.convert_to_tensor(centers, "float32")
    squared_norms = ops.sum(ops.square(embeddings), axis=1)
    nearest = None
    for start in range(0, int(centers.shape[0]), block_size):
        block = centers[start : start + block_size]
        cross = ops.matmul(embeddings, ops.transpose(block))
        block_distances = squared_norms[:, None] - 2.0 * cross + ops.sum(ops.square(block), axis=1)[None, :]
        block_nearest = ops.maximum(ops.min(block_distances, axis=1), 0.0)
        nearest = block_nearest if nearest is None else ops.minimum(nearest, block_nearest)
    return ops.convert_to_numpy(nearest)


@tf.function(reduce_retracing=True)
def _farthest_first(embeddings, min_squared, taken, steps):
    positions = tf.range(tf.shape(embeddings)[0], dtype=tf.int64)
    chosen = tf.TensorArray(tf.int64, size=steps)
    distances = tf.TensorArray(tf.float32, size=steps)
    for step in tf.range(steps):
        candidate = ops.cast(ops.argmax(ops.where(taken, -1.0, min_squared)), "int64")
        chosen = chosen.write(step, candidate)
        distances = distances.write(step, ops.sqrt(min_squared[candidate]))
        to_center = ops.sum(ops.square(embeddings - embeddings[candidate][None, :]), axis=1)
        min_squared = ops.minimum(min_squared, to_center)
        taken = ops.logical_or(taken, ops.equal(positions, candidate))
    return chosen.stack(), distances.stack()


def k_center_greedy(
    embeddings,
    k: int,
    initial_squared_distances=None,
    first_index: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (farthest-first traversal), the core-set heuristic of Sener & Savarese.

    Each step takes the item farthest from its nearest center (ties: lowest
    position) and makes it a center.

    Args:
        embeddings: `(N, D)` pool embeddings.
        k: number of centers to pick, `1 <= k <= N`.
        initial_squared_distances: `(N,)` squared distance of each item to the
            nearest already-labeled item, or `None` when nothing is labeled.
        first_index: with no labeled items, the position of the first center.

    Returns:
        `(positions, distances)`: chosen positions in pick order and each one's
        distance to its nearest center when picked (`inf` for an unconditioned
        first center).

    Example:

    >>> points = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    >>> k_center_greedy(points, 2)[0].tolist()
    [0, 2]
    """
    embeddings = ops.convert_to_tensor(embeddings, "float32")
    size = int(embeddings.shape[0])
    taken = np.zeros(size, bool)
    if initial_squared_distances is None:
        first = embeddings[first_index]
        min_squared = ops.sum(ops.square(embeddings - first[None, :]), axis=1)
        taken[first_index] = True
        head = (np.array([first_index], np.int64), np.array([np.inf], np.float32))
        steps = k - 1
    else:
        min_squared = ops.convert_to_tensor(initial_squared_distances, "float32")
        head = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        steps = k
    if steps == 0:
        return head
    chosen, distances = _farthest_first(embeddings, min_squared, ops.convert_to_tensor(taken), tf.constant(steps))
    return np.concatenate([head[0], chosen.numpy()]), np.concatenate([head[1], distances.numpy()])


@tf.function(reduce_retracing=True)
def _kmeans_plus_plus(residuals, features, steps, seed):
    residual_norms = ops.sum(ops.square(residuals), axis=1)
    feature_norms = ops.sum(ops.square(features), axis=1)
    squared_norms = residual_norms * feature_norms
    positions = tf.range(tf.shape(residuals)[0], dtype=tf.int64)

    def squared_distance_to(center):
        residual_cross = ops.matmul(residuals, residuals[center][:, None])[:, 0]
        cross = residual_cross * ops.matmul(features, features[center][:, None])[:, 0]
        return ops.maximum(squared_norms + squared_norms[center] - 2.0 * cross, 0.0)

    first = ops.cast(ops.argmax(squared_norms), "int64")
    min_squared = squared_distance_to(first)
    taken = ops.equal(positions, first)
    chosen = tf.TensorArray(tf.int64, size=steps).write(0, first)
    distances = tf.TensorArray(tf.float32, size=steps).write(0, ops.sqrt(squared_norms[first]))
    for step in tf.range(1, steps):
        # Sampling weight proportional to D^2; the floor keeps duplicates (D = 0) reachable once all else is taken.
        logits = ops.where(taken, -np.inf, ops.log(ops.maximum(min_squared, 1e-30)))
        candidate = tf.random.stateless_categorical(logits[None, :], 1, seed=tf.stack([seed, tf.cast(step, tf.int64)]))
        candidate = candidate[0, 0]
        chosen = chosen.write(step, candidate)
        distances = distances.write(step, ops.sqrt(min_squared[candidate]))
        min_squared = ops.minimum(min_squared, squared_distance_to(candidate))
        taken = ops.logical_or(taken, ops.equal(positions, candidate))
    return chosen.stack(), distances.stack()


def kmeans_plus_plus_gradients(residuals, features, k: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding on BADGE gradient embeddings, without materialising them.

    The gradient embedding of item i is the outer product `r_i (x) h_i` of its
    loss-gradient residual `r_i = p_i - onehot(argmax p_i)` (C values) and its
    penultimate features `h_i` (D values). Distances use
    `|g_i - g_j|^2 = |r_i|^2 |h_i|^2 + |r_j|^2 |h_j|^2 - 2 (r_i . r_j)(h_i . h_j)`,
    so memory is O(N * (C + D)) instead of O(N * C * D). The first center is
    the largest gradient (as in BADGE); the others are sampled with
    probability proportional to the squared distance to the nearest center.

    Args:
        residuals: `(N, C)` array.
        features: `(N, D)` array.
        k: number of centers, `1 <= k <= N`.
        seed: integer seed for the sampling, or `None`.

    Returns:
        `(positions, distances)`: chosen positions in pick order and each one's
        distance to the nearest earlier center (its gradient norm for the first).

    Example:

    >>> residuals = np.array([[0.5, -0.5], [0.1, -0.1], [-0.4, 0.4]])
    >>> sorted(kmeans_plus_plus_gradients(residuals, np.ones((3, 2)), 2, seed=0)[0].tolist())[0]
    0
    """
    residuals = ops.convert_to_tensor(residuals, "float32")
    features = ops.convert_to_tensor(features, "float32")
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    chosen, distances = _kmeans_plus_plus(residuals, features, tf.constant(k), tf.constant(seed, tf.int64))
    return chosen.numpy(), distances.numpy()


def nearest_center(embeddings, centers, block_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Index of each embedding's nearest center and the squared distance to it.

    Computed in blocks of `block_size` embeddings (memory O(block_size * M)).

    Example:

    >>> nearest_center(np.array([[0.0], [4.0], [9.0]]), np.array([[1.0], [8.0]]))[0].tolist()
    [0, 0, 1]
    """
    embeddings = np.asarray(embeddings, np.float32)
    centers = np.asarray(centers, np.float32)
    center_norms = np.sum(np.square(centers), axis=1)
    assignment = np.empty(len(embeddings), np.int64)
    distance = np.empty(len(embeddings), np.float32)
    for start in range(0, len(embeddings), block_size):
        block = embeddings[start : start + block_size]
        squared = np.sum(np.square(block), axis=1)[:, None] - 2.0 * block @ centers.T + center_norms[None, :]
        assignment[start : start + block_size] = np.argmin(squared, axis=1)
        distance[start : start + block_size] = np.maximum(np.min(squared, axis=1), 0.0)
    return assignment, distance


def kmeans(embeddings, k: int, seed: int | None = None, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns each embedding's cluster in `[0, k)`.

    Seeding samples each new center with probability proportional to the
    squared distance to the nearest center so far (a point already taken is
    never taken again). An empty cluster keeps its center. Seeding and the
    Lloyd iterations run in one compiled TensorFlow function (on a GPU when
    there is one, without a host round trip per step); distances are computed
    in row blocks, so memory is O(N * D + k * D) plus one `(block, k)` block.

    Args:
        embeddings: `(N, D)` array.
        k: number of clusters, `1 <= k <= N`.
        seed: integer seed, or `None`.
        iterations: Lloyd iterations after seeding (stops early when stable).

    Example:

    >>> points = np.array([[0.0], [0.1], [10.0], [10.1]])
    >>> labels = kmeans(points, 2, seed=0)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
    """
    embeddings = np.asarray(embeddings, np.float32)
    size = len(embeddings)
    if not 1 <= k <= size:
        raise ValueError(f"Expected 1 <= k <= {size} (the number of embeddings). Received: k={k}")
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    assignment = _kmeans(
        tf.constant(embeddings), tf.constant(k), tf.constant(seed, tf.int64), tf.constant(int(iterations))
    )
    return assignment.numpy().astype(np.int64)


_NEAREST_BLOCK = 4096


def _nearest(embeddings, squared_norms, centers):
    """Index of each row's nearest center, computed over row blocks of `_NEAREST_BLOCK` (graph code)."""
    center_norms = ops.sum(ops.square(centers), axis=1)
    size = tf.shape(embeddings)[0]
    blocks = (size + _NEAREST_BLOCK - 1) // _NEAREST_BLOCK
    nearest = tf.TensorArray(tf.int32, size=blocks, infer_shape=False)
    for block in tf.range(blocks):
        start = block * _NEAREST_BLOCK
        rows = embeddings[start : start + _NEAREST_BLOCK]
        squared = squared_norms[start : start + _NEAREST_BLOCK, None] - 2.0 * ops.matmul(rows, ops.transpose(centers))
        nearest = nearest.write(block, tf.argmin(squared + center_norms[None, :], axis=1, output_type=tf.int32))
    return nearest.concat()


@tf.function(reduce_retracing=True)
def _kmeans(embeddings, k, seed, iterations):
    size = tf.shape(embeddings)[0]
    squared_norms = ops.sum(ops.square(embeddings), axis=1)
    positions = tf.range(size)

    def squared_distance_to(center):
        cross = ops.matmul(embeddings, embeddings[center][:, None])[:, 0]
        return ops.maximum(squared_norms + squared_norms[center] - 2.0 * cross, 0.0)

    first = tf.random.stateless_uniform([], tf.stack([seed, 0]), maxval=size, dtype=tf.int32)
    min_squared = squared_distance_to(first)
    taken = ops.equal(positions, first)
    chosen = tf.TensorArray(tf.int32, size=k).write(0, first)
    for step in tf.range(1, k):
        # Weight proportional to D^2 among the points not taken; the floor keeps duplicates (D = 0) reachable.
        logits = ops.where(taken, -np.inf, ops.log(ops.maximum(min_squared, 1e-30)))
        step_seed = tf.stack([seed, tf.cast(step, tf.int64)])
        candidate = tf.random.stateless_categorical(logits[None, :], 1, seed=step_seed, dtype=tf.int32)[0, 0]
        chosen = chosen.write(step, candidate)
        min_squared = ops.minimum(min_squared, squared_distance_to(candidate))
        taken = ops.logical_or(taken, ops.equal(positions, candidate))
    centers = tf.gather(embeddings, chosen.stack())
    assignment = _nearest(embeddings, squared_norms, centers)
    ones = tf.ones([size], embeddings.dtype)
    for _ in tf.range(iterations):
        counts = tf.math.unsorted_segment_sum(ones, assignment, k)
        sums = tf.math.unsorted_segment_sum(embeddings, assignment, k)
        means = sums / ops.maximum(counts, 1.0)[:, None]
        centers = tf.reshape(tf.where(counts[:, None] > 0, means, centers), tf.shape(centers))
        updated = _nearest(embeddings, squared_norms, centers)
        if tf.reduce_all(ops.equal(updated, assignment)):
            break
        assignment = updated
    return assignment


def best_per_cluster(scores, clusters, k: int) -> np.ndarray:
    """Positions of the `k` picks: the best-scored item of every cluster, then the best of the rest.

    Clusters are visited in the order of their best score (highest first), so
    when there are more clusters than `k` the hardest clusters win; when there
    are fewer non-empty clusters than `k`, the remaining picks are the highest
    scores not yet picked. Ties go to the lower position. Returned best first
    in that visiting order.

    Example:

    >>> best_per_cluster(np.array([0.9, 0.8, 0.1, 0.5]), np.array([0, 0, 1, 1]), 3).tolist()
    [0, 3, 1]
    """
    scores = np.asarray(scores, np.float64)
    clusters = np.asarray(clusters)
    order = np.lexsort((np.arange(len(scores)), -scores))  # by score, high first; ties: low position
    _, first = np.unique(clusters[order], return_index=True)
    leaders = order[np.sort(first)]
    if len(leaders) >= k:
        return leaders[:k]
    taken = np.zeros(len(scores), bool)
    taken[leaders] = True
    rest = order[~taken[order]]
    return np.concatenate([leaders, rest[: k - len(leaders)]])


def hardest_per_cluster(
    scores, embeddings, k: int, seed: int | None = None, iterations: int = KMEANS_ITERATIONS
) -> np.ndarray:
    """Positions of the `k` picks: the highest score in each of `k` k-means clusters of `embeddings`.

    `kmeans` then `best_per_cluster` (see both): hard and diverse, the rule of
    `LearningLossClusters` and of the triage queue.

    Example:

    >>> points = np.array([[0.0], [0.1], [10.0], [10.1]])
    >>> hardest_per_cluster(np.array([0.2, 0.9, 0.5, 0.4]), points, 2, seed=0).tolist()
    [1, 2]
    """
    return best_per_cluster(scores, kmeans(embeddings, k, seed, iterations), k)


def loss_rank_weights(predicted: np.ndarray) -> np.ndarray:
    """`rank / n` in `(0, 1]` of each predicted loss (1 for the highest; ties by position).

    Example:

    >>> loss_rank_weights(np.array([0.3, -2.0, 5.0, 0.1])).tolist()
    [0.75, 0.25, 1.0, 0.5]
    """
    ranks = np.empty(len(predicted), np.float64)
    ranks[np.lexsort((np.arange(len(predicted)), predicted))] = np.arange(1, len(predicted) + 1)
    return (ranks / max(len(predicted), 1)).astype(np.float32)


def kmeans_plus_plus_loss_weighted(
    predicted, residuals, features, k: int, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """BADGE's k-means++ seeding with each residual weighted by its predicted-loss rank (`loss_rank_weights`).

    The rule of `LearningLossBadge` and of the triage queue; returns what
    `kmeans_plus_plus_gradients` returns.

    Example:

    The first center is the largest weighted gradient: item 0 for BADGE, item 2
    once item 0's low predicted loss shrinks it.

    >>> residuals = np.array([[0.5, -0.5], [0.1, -0.1], [-0.4, 0.4]])
    >>> kmeans_plus_plus_gradients(residuals, np.ones((3, 2)), 1, seed=0)[0].tolist()
    [0]
    >>> kmeans_plus_plus_loss_weighted(np.array([1.0, 3.0, 2.0]), residuals, np.ones((3, 2)), 1, seed=0)[0].tolist()
    [2]
    """
    weights = loss_rank_weights(np.asarray(predicted))
    return kmeans_plus_plus_gradients(np.asarray(residuals, np.float32) * weights[:, None], features, k, seed)


# TypiClust (Hacohen et al. 2022): neighbours of the typicality, and clusters smaller than this are passed over.
TYPICALITY_NEIGHBOURS = 20
MIN_CLUSTER_SIZE = 5


def typicality(embeddings, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """Each row's typicality among `embeddings`: 1 / the mean Euclidean distance to its nearest neighbours.

    The neighbours are the `min(neighbours, N - 1)` nearest other rows (TypiClust's density); a lone
    row has typicality 0. Memory is O(N^2) for the N rows given, so call it per cluster.

    Example:

    >>> typicality(np.array([[0.0], [1.0], [2.0], [10.0]]), neighbours=1).round(3).tolist()
    [1.0, 1.0, 1.0, 0.125]
    """
    embeddings = np.asarray(embeddings, np.float64)
    count = len(embeddings)
    if count < 2:
        return np.zeros(count)
    squared = np.sum(embeddings**2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * embeddings @ embeddings.T, 0.0))
    np.fill_diagonal(distances, np.inf)
    nearest = min(int(neighbours), count - 1)
    mean = np.partition(distances, nearest - 1, axis=1)[:, :nearest].mean(axis=1)
    return 1.0 / np.maximum(mean, np.finfo(np.float64).tiny)


def typical_per_cluster(
    embeddings,
    clusters,
    labeled_clusters,
    k: int,
    neighbours: int = TYPICALITY_NEIGHBOURS,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
    labeled_embeddings=None,
) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust's picks: `(positions, typicality)` of `k` candidates, the most typical of the least covered clusters.

    Each pick goes to the cluster with the fewest labeled items (those labeled before and the earlier
    picks), the largest first among equals (then the lower cluster id), skipping clusters of fewer than
    `min_cluster_size` items while larger ones have candidates left; within it, the candidate of
    highest `typicality` among all the cluster's items (candidates and labeled), the lower position
    first among equals.

    Args:
        embeddings: `(N, D)` candidates' embeddings.
        clusters: `(N,)` each candidate's cluster id (from k-means over candidates and labeled items).
        labeled_clusters: `(L,)` each labeled item's cluster id.
        k: picks, at most N.
        neighbours: neighbours of the typicality.
        min_cluster_size: clusters (candidates + labeled) smaller than this are used only when no
            larger cluster has candidates left.
        labeled_embeddings: `(L, D)` labeled items' embeddings (their neighbourhood counts too), or `None`.

    Example:

    >>> points = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]])
    >>> positions, _ = typical_per_cluster(points, np.array([0, 0, 0, 1, 1, 2]), np.array([0]), 2,
    ...                                    neighbours=2, min_cluster_size=2)
    >>> positions.tolist()  # cluster 1 has no labeled item; then cluster 0, its middle point
    [3, 1]
    """
    clusters = np.asarray(clusters, np.int64)
    labeled_clusters = np.asarray(labeled_clusters, np.int64).reshape(-1)
    if not 1 <= k <= len(clusters):
        raise ValueError(f"Expected 1 <= k <= {len(clusters)} (the candidates). Received: k={k}")
    count = int(max(clusters.max(initial=-1), labeled_clusters.max(initial=-1))) + 1
    covered = np.bincount(labeled_clusters, minlength=count)
    sizes = np.bincount(clusters, minlength=count) + covered
    embeddings = np.asarray(embeddings, np.float64)
    labeled_embeddings = None if labeled_embeddings is None else np.asarray(labeled_embeddings, np.float64)
    # Each cluster's candidates and labeled items as contiguous runs of one stable sort (not a scan per cluster).
    by_cluster = np.argsort(clusters, kind="stable")
    starts = np.searchsorted(clusters[by_cluster], np.arange(count + 1))
    labeled_by_cluster = np.argsort(labeled_clusters, kind="stable")
    labeled_starts = np.searchsorted(labeled_clusters[labeled_by_cluster], np.arange(count + 1))
    scores = np.zeros(len(clusters))
    members: list[list[int]] = []
    for cluster in range(count):
        positions = by_cluster[starts[cluster] : starts[cluster + 1]]
        if len(positions):
            own = embeddings[positions]
            if labeled_embeddings is not None and covered[cluster]:
                labeled_rows = labeled_by_cluster[labeled_starts[cluster] : labeled_starts[cluster + 1]]
                own = np.concatenate([own, labeled_embeddings[labeled_rows]])
            scores[positions] = typicality(own, neighbours)[: len(positions)]
        order = positions[np.lexsort((positions, -scores[positions]))]  # most typical first, ties: low position
        members.append(order.tolist()[::-1])  # popped from the end
    # The least covered cluster first, the largest among equals, then the lower id; clusters under
    # min_cluster_size only once no larger one has candidates. Only the picked cluster's key changes, so a
    # heap per kind keeps every entry current: O(k log C) instead of a scan of all clusters per pick.
    heaps: tuple[list, list] = ([], [])
    for cluster in range(count):
        if members[cluster]:
            heaps[int(sizes[cluster] < min_cluster_size)].append((int(covered[cluster]), -int(sizes[cluster]), cluster))
    for heap in heaps:
        heapq.heapify(heap)
    picks = []
    for _ in range(k):
        heap = heaps[0] or heaps[1]
        taken, negative_size, cluster = heapq.heappop(heap)
        picks.append(members[cluster].pop())
        if members[cluster]:
            heapq.heappush(heap, (taken + 1, negative_size, cluster))
    picks = np.asarray(picks, np.int64)
    return picks, scores[picks]


def typiclust_picks(
    candidates,
    labeled,
    k: int,
    seed: int | None = None,
    neighbours: int = TYPICALITY_NEIGHBOURS,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust on embeddings: `(positions, typicality)` of `k` of the `candidates`.

    The candidates and the labeled items are split into `min(L + k, N + L)` k-means clusters (`kmeans`,
    `seed`), then `typical_per_cluster` picks. The rule of `TypiClust` and of triage's `typiclust` queue.

    Args:
        candidates: `(N, D)` embeddings to pick from.
        labeled: `(L, D)` labeled items' embeddings, or `None` (then every cluster is uncovered); rows
            with NaN/inf are left out (`finite_labeled`).
        k: picks, `1 <= k <= N`.
        seed: the k-means seed.
        neighbours: neighbours of the typicality.
        min_cluster_size: clusters smaller than this are picked from last.

    Example:

    >>> points = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]], np.float32)
    >>> positions, _ = typiclust_picks(points, np.array([[0.1]], np.float32), 1, seed=0, neighbours=2,
    ...                                min_cluster_size=1)
    >>> positions.tolist()  # the cluster the labeled item does not cover, its middle point
    [4]
    """
    candidates = np.asarray(candidates, np.float32)
    labeled = finite_labeled(labeled, candidates.shape[1])
    everything = np.concatenate([candidates, labeled])
    clusters = kmeans(everything, min(len(labeled) + k, len(everything)), seed)
    return typical_per_cluster(
        candidates,
        clusters[: len(candidates)],
        clusters[len(candidates) :],
        k,
        neighbours,
        min_cluster_size,
        labeled,
    )


def finite_labeled(labeled, width: int) -> np.ndarray:
    """Labeled items' embeddings as `(L, width)` float32 without non-finite rows; `None` or empty: `(0, width)`.

    Another shape is a `ValueError` naming it.

    Example:

    >>> finite_labeled([[0.0, 1.0], [np.nan, 0.0]], 2).tolist(), finite_labeled(None, 3).shape
    ([[0.0, 1.0]], (0, 3))
    >>> finite_labeled(np.zeros((3, 4)), 2)
    Traceback (most recent call last):
    ...
    ValueError: Expected the labeled items' embeddings as an (L, 2) array, the width of the candidates'. Received shape (3, 4)
    """
    if labeled is None or np.size(labeled) == 0:
        return np.zeros((0, width), np.float32)
    labeled = np.asarray(labeled, np.float32)
    if labeled.ndim != 2 or labeled.shape[1] != width:
        raise ValueError(
            f"Expected the labeled items' embeddings as an (L, {width}) array, the width of the candidates'. "
            f"Received shape {labeled.shape}"
        )
    return labeled[np.isfinite(labeled).all(axis=1)]
