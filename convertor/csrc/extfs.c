/*
 * A thin layer over e2fsprogs' libext2fs for the convertor: an io_manager whose reads and
 * writes go to callbacks (the Rust side's work disk), and the handful of filesystem operations
 * that applying a layer tar needs. Policy (path resolution, whiteouts, what a tar entry means)
 * lives in Rust; this file only touches ext2fs structures, whose layout is C's business.
 *
 * Every function returns an errcode_t: 0, an errno value, or a com_err code from libext2fs
 * (the Rust side turns it into a message with error_message()).
 *
 * Modelled on e2fsprogs' misc/create_inode.c (mke2fs -d) and lib/ext2fs/unix_io.c.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <et/com_err.h>
#include <ext2fs/ext2_io.h>
#include <ext2fs/ext2fs.h>

#ifndef EXT4_LINK_MAX
#define EXT4_LINK_MAX 65000
#endif

struct obd_io_ops {
	void *ctx;
	int (*read)(void *ctx, uint64_t off, void *buf, size_t len);
	int (*write)(void *ctx, uint64_t off, const void *buf, size_t len);
	int (*flush)(void *ctx);
};

static struct struct_io_manager obd_io_manager;

static errcode_t obd_io_open(const char *name, int flags, io_channel *channel)
{
	struct obd_io_ops *ops = NULL;
	io_channel io = NULL;
	errcode_t r;

	(void)flags;
	if (!name || sscanf(name, "obd:%p", (void **)&ops) != 1 || !ops)
		return EXT2_ET_BAD_DEVICE_NAME;
	r = ext2fs_get_memzero(sizeof(struct struct_io_channel), &io);
	if (r)
		return r;
	r = ext2fs_get_mem(strlen(name) + 1, &io->name);
	if (r) {
		ext2fs_free_mem(&io);
		return r;
	}
	strcpy(io->name, name);
	io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	io->manager = &obd_io_manager;
	io->block_size = 1024;
	io->refcount = 1;
	io->private_data = ops;
	*channel = io;
	return 0;
}

static errcode_t obd_io_close(io_channel io)
{
	if (--io->refcount > 0)
		return 0;
	ext2fs_free_mem(&io->name);
	ext2fs_free_mem(&io);
	return 0;
}

static errcode_t obd_io_set_blksize(io_channel io, int blksize)
{
	io->block_size = blksize;
	return 0;
}

static size_t obd_len(io_channel io, int count)
{
	return count < 0 ? (size_t)(-count) : (size_t)count * (size_t)io->block_size;
}

static errcode_t obd_io_read_blk64(io_channel io, unsigned long long block, int count,
				   void *data)
{
	struct obd_io_ops *ops = io->private_data;
	return ops->read(ops->ctx, block * (uint64_t)io->block_size, data, obd_len(io, count));
}

static errcode_t obd_io_write_blk64(io_channel io, unsigned long long block, int count,
				    const void *data)
{
	struct obd_io_ops *ops = io->private_data;
	return ops->write(ops->ctx, block * (uint64_t)io->block_size, data, obd_len(io, count));
}

static errcode_t obd_io_read_blk(io_channel io, unsigned long block, int count, void *data)
{
	return obd_io_read_blk64(io, block, count, data);
}

static errcode_t obd_io_write_blk(io_channel io, unsigned long block, int count,
				  const void *data)
{
	return obd_io_write_blk64(io, block, count, data);
}

static errcode_t obd_io_write_byte(io_channel io, unsigned long offset, int count,
				   const void *data)
{
	struct obd_io_ops *ops = io->private_data;
	if (count < 0)
		return EINVAL;
	return ops->write(ops->ctx, offset, data, (size_t)count);
}

static errcode_t obd_io_flush(io_channel io)
{
	struct obd_io_ops *ops = io->private_data;
	return ops->flush(ops->ctx);
}

static errcode_t obd_io_set_option(io_channel io, const char *option, const char *arg)
{
	(void)io;
	(void)option;
	(void)arg;
	return EXT2_ET_INVALID_ARGUMENT;
}

static struct struct_io_manager obd_io_manager = {
	.magic = EXT2_ET_MAGIC_IO_MANAGER,
	.name = "overlaybd-convertor I/O manager",
	.open = obd_io_open,
	.close = obd_io_close,
	.set_blksize = obd_io_set_blksize,
	.read_blk = obd_io_read_blk,
	.write_blk = obd_io_write_blk,
	.flush = obd_io_flush,
	.write_byte = obd_io_write_byte,
	.set_option = obd_io_set_option,
	.read_blk64 = obd_io_read_blk64,
	.write_blk64 = obd_io_write_blk64,
};

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void init_tables(void)
{
	initialize_ext2_error_table();
}

const char *obd_error_message(errcode_t code)
{
	pthread_once(&tables_once, init_tables);
	return error_message(code);
}

/* Opens the filesystem on `ops` (which must outlive it). `now` is the time libext2fs stamps
 * into anything it touches (superblock write time and the like), so output is reproducible. */
errcode_t obd_fs_open(struct obd_io_ops *ops, int rw, int64_t now, ext2_filsys *out)
{
	char name[64];
	ext2_filsys fs = NULL;
	errcode_t r;
	int flags = EXT2_FLAG_64BITS | EXT2_FLAG_IGNORE_CSUM_ERRORS;

	if (rw)
		flags |= EXT2_FLAG_RW;
	snprintf(name, sizeof(name), "obd:%p", (void *)ops);
	r = ext2fs_open2(name, NULL, flags, 0, 0, &obd_io_manager, &fs);
	if (r)
		return r;
	fs->now = (time_t)now;
	r = ext2fs_read_bitmaps(fs);
	if (r) {
		ext2fs_close_free(&fs);
		return r;
	}
	fs->umask = 0;
	*out = fs;
	return 0;
}

/* Writes everything back (when opened read-write) and frees the handle. */
errcode_t obd_fs_close(ext2_filsys fs)
{
	return ext2fs_close_free(&fs);
}

/* Abandons the handle without writing anything. */
void obd_fs_abort(ext2_filsys fs)
{
	fs->flags &= ~EXT2_FLAG_DIRTY;
	fs->flags &= ~(EXT2_FLAG_IB_DIRTY | EXT2_FLAG_BB_DIRTY);
	ext2fs_free(fs);
}

void obd_fs_counts(ext2_filsys fs, uint64_t *free_blocks, uint64_t *free_inodes,
		   uint32_t *block_size)
{
	*free_blocks = ext2fs_free_blocks_count(fs->super);
	*free_inodes = fs->super->s_free_inodes_count;
	*block_size = fs->blocksize;
}

/* What the Rust side sees of an inode. Times are seconds + nanoseconds. */
struct obd_stat {
	uint32_t mode;
	uint32_t uid;
	uint32_t gid;
	uint32_t links;
	uint64_t size;
	int64_t atime;
	int64_t mtime;
	int64_t ctime;
	uint32_t atime_ns;
	uint32_t mtime_ns;
	uint32_t ctime_ns;
	uint32_t rdev_major;
	uint32_t rdev_minor;
	uint32_t flags;
	uint64_t blocks512;
};

/* What a tar entry sets on an inode. */
struct obd_meta {
	uint32_t mode; /* permission bits and setuid/setgid/sticky; the type is fixed at creation */
	uint32_t uid;
	uint32_t gid;
	int64_t atime;
	int64_t mtime;
	uint32_t atime_ns;
	uint32_t mtime_ns;
};

static int64_t decode_time(uint32_t lo, uint32_t extra, int has_extra, uint32_t *ns)
{
	int64_t t = (int32_t)lo;
	*ns = 0;
	if (has_extra) {
		t += (int64_t)(extra & 3) << 32;
		*ns = extra >> 2;
	}
	return t;
}

static void encode_time(int64_t t, uint32_t ns, uint32_t *lo, uint32_t *extra)
{
	*lo = (uint32_t)t;
	*extra = ((uint32_t)(((t - (int32_t)t) >> 32) & 3)) | (ns << 2);
}

static int has_field(struct ext2_inode_large *in, size_t end)
{
	return (size_t)EXT2_GOOD_OLD_INODE_SIZE + in->i_extra_isize >= end;
}

#define HAS(in, field)                                                                    \
	has_field(in, offsetof(struct ext2_inode_large, field) + sizeof((in)->field))

static errcode_t read_large(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *in)
{
	memset(in, 0, sizeof(*in));
	return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)in, sizeof(*in));
}

static errcode_t write_large(ext2_filsys fs, ext2_ino_t ino, struct ext2_inode_large *in)
{
	return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)in, sizeof(*in));
}

errcode_t obd_stat(ext2_filsys fs, ext2_ino_t ino, struct obd_stat *st)
{
	struct ext2_inode_large in;
	errcode_t r = read_large(fs, ino, &in);
	if (r)
		return r;
	memset(st, 0, sizeof(*st));
	st->mode = in.i_mode;
	st->uid = inode_uid(in);
	st->gid = inode_gid(in);
	st->links = in.i_links_count;
	st->size = EXT2_I_SIZE(&in);
	st->atime = decode_time(in.i_atime, in.i_atime_extra, HAS(&in, i_atime_extra), &st->atime_ns);
	st->mtime = decode_time(in.i_mtime, in.i_mtime_extra, HAS(&in, i_mtime_extra), &st->mtime_ns);
	st->ctime = decode_time(in.i_ctime, in.i_ctime_extra, HAS(&in, i_ctime_extra), &st->ctime_ns);
	st->flags = in.i_flags;
	st->blocks512 = ext2fs_get_stat_i_blocks(fs, (struct ext2_inode *)&in);
	if (LINUX_S_ISCHR(in.i_mode) || LINUX_S_ISBLK(in.i_mode)) {
		if (in.i_block[0]) {
			st->rdev_major = (in.i_block[0] >> 8) & 255;
			st->rdev_minor = in.i_block[0] & 255;
		} else {
			st->rdev_major = (in.i_block[1] & 0xfff00) >> 8;
			st->rdev_minor = (in.i_block[1] & 0xff) | ((in.i_block[1] >> 12) & 0xfff00);
		}
	}
	return 0;
}

/* Sets mode bits (type kept), owner and times; ctime and crtime follow mtime so that the
 * output depends only on the input. */
errcode_t obd_set_meta(ext2_filsys fs, ext2_ino_t ino, const struct obd_meta *m)
{
	struct ext2_inode_large in;
	uint32_t lo, extra;
	errcode_t r = read_large(fs, ino, &in);
	if (r)
		return r;
	in.i_mode = (in.i_mode & LINUX_S_IFMT) | (m->mode & 07777);
	in.i_uid = m->uid & 0xffff;
	ext2fs_set_i_uid_high(in, m->uid >> 16);
	in.i_gid = m->gid & 0xffff;
	ext2fs_set_i_gid_high(in, m->gid >> 16);
	encode_time(m->atime, m->atime_ns, &lo, &extra);
	in.i_atime = lo;
	if (HAS(&in, i_atime_extra))
		in.i_atime_extra = extra;
	encode_time(m->mtime, m->mtime_ns, &lo, &extra);
	in.i_mtime = lo;
	in.i_ctime = lo;
	if (HAS(&in, i_mtime_extra))
		in.i_mtime_extra = extra;
	if (HAS(&in, i_ctime_extra))
		in.i_ctime_extra = extra;
	if (HAS(&in, i_crtime_extra)) {
		in.i_crtime = lo;
		in.i_crtime_extra = extra;
	}
	return write_large(fs, ino, &in);
}

/* `*ino` = 0 when there is no such entry. */
errcode_t obd_lookup(ext2_filsys fs, ext2_ino_t dir, const char *name, size_t len,
		     ext2_ino_t *ino)
{
	errcode_t r = ext2fs_lookup(fs, dir, name, (int)len, NULL, ino);
	if (r == EXT2_ET_FILE_NOT_FOUND) {
		*ino = 0;
		return 0;
	}
	return r;
}

static errcode_t link_slow(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
			   int filetype)
{
	errcode_t r = ext2fs_link(fs, dir, name, ino, filetype);
	if (r == EXT2_ET_DIR_NO_SPACE) {
		r = ext2fs_expand_dir(fs, dir);
		if (r)
			return r;
		r = ext2fs_link(fs, dir, name, ino, filetype);
	}
	return r;
}

/* Appends the entry to the directory's last block (or a new one). ext2fs_link looks for
 * room from the first block on, which makes filling a directory of n entries cost n^2; a
 * linear directory is equally valid with the entry at its end. Indexed or inline
 * directories, and filesystems with directory checksums, take the library's path. */
static errcode_t link_expanding(ext2_filsys fs, ext2_ino_t dir, const char *name,
				ext2_ino_t ino, int filetype)
{
	struct ext2_inode in;
	struct ext2_dir_entry *d, *last = NULL, *e;
	char *buf = NULL;
	blk64_t pblk = 0;
	unsigned int off = 0, rec_len = 0, used, need;
	int namelen = (int)strlen(name), tries;
	uint64_t size;
	errcode_t r;

	if (ext2fs_has_feature_metadata_csum(fs->super) ||
	    ext2fs_has_feature_inline_data(fs->super) || namelen > EXT2_NAME_LEN)
		return link_slow(fs, dir, name, ino, filetype);
	need = EXT2_DIR_REC_LEN(namelen);
	r = ext2fs_get_mem(fs->blocksize, &buf);
	if (r)
		return r;
	for (tries = 0; tries < 2; tries++) {
		r = ext2fs_read_inode(fs, dir, &in);
		if (r)
			goto out;
		size = EXT2_I_SIZE(&in);
		if ((in.i_flags & (EXT2_INDEX_FL | EXT4_INLINE_DATA_FL)) || size == 0 ||
		    size % fs->blocksize) {
			ext2fs_free_mem(&buf);
			return link_slow(fs, dir, name, ino, filetype);
		}
		r = ext2fs_bmap2(fs, dir, &in, NULL, 0, size / fs->blocksize - 1, NULL, &pblk);
		if (r)
			goto out;
		if (!pblk) {
			ext2fs_free_mem(&buf);
			return link_slow(fs, dir, name, ino, filetype);
		}
		r = ext2fs_read_dir_block4(fs, pblk, buf, 0, dir);
		if (r)
			goto out;
		off = 0;
		last = NULL;
		while (off < fs->blocksize) {
			d = (struct ext2_dir_entry *)(buf + off);
			r = ext2fs_get_rec_len(fs, d, &rec_len);
			if (r)
				goto out;
			if (rec_len < 8 || off + rec_len > fs->blocksize) {
				ext2fs_free_mem(&buf);
				return link_slow(fs, dir, name, ino, filetype);
			}
			last = d;
			off += rec_len;
		}
		used = last->inode ? EXT2_DIR_REC_LEN(ext2fs_dirent_name_len(last)) : 0;
		if (rec_len >= used + need) {
			e = last;
			if (used) {
				r = ext2fs_set_rec_len(fs, used, last);
				if (r)
					goto out;
				e = (struct ext2_dir_entry *)((char *)last + used);
				r = ext2fs_set_rec_len(fs, rec_len - used, e);
				if (r)
					goto out;
			}
			e->inode = ino;
			ext2fs_dirent_set_name_len(e, namelen);
			ext2fs_dirent_set_file_type(e, 0);
			if (ext2fs_has_feature_filetype(fs->super))
				ext2fs_dirent_set_file_type(e, filetype & 7);
			memcpy(e->name, name, (size_t)namelen);
			r = ext2fs_write_dir_block4(fs, pblk, buf, 0, dir);
			goto out;
		}
		if (tries == 0) {
			r = ext2fs_expand_dir(fs, dir);
			if (r)
				goto out;
		}
	}
	r = EXT2_ET_DIR_NO_SPACE;
out:
	ext2fs_free_mem(&buf);
	return r;
}

errcode_t obd_mkdir(ext2_filsys fs, ext2_ino_t parent, const char *name, ext2_ino_t *out)
{
	ext2_ino_t ino = 0;
	errcode_t r = ext2fs_new_inode(fs, parent, LINUX_S_IFDIR | 0755, 0, &ino);
	if (r)
		return r;
	r = ext2fs_mkdir(fs, parent, ino, name);
	if (r == EXT2_ET_DIR_NO_SPACE) {
		r = ext2fs_expand_dir(fs, parent);
		if (r)
			return r;
		r = ext2fs_mkdir(fs, parent, ino, name);
	}
	if (r)
		return r;
	*out = ino;
	return 0;
}

/* A new inode of `mode` (type and bits) linked as `name` in `parent`, with no data. */
static errcode_t new_node(ext2_filsys fs, ext2_ino_t parent, const char *name, uint32_t mode,
			  int filetype, struct ext2_inode *inode, ext2_ino_t *out)
{
	ext2_ino_t ino = 0;
	errcode_t r = ext2fs_new_inode(fs, parent, mode, 0, &ino);
	if (r)
		return r;
	r = link_expanding(fs, parent, name, ino, filetype);
	if (r)
		return r;
	ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
	inode->i_mode = mode;
	inode->i_atime = inode->i_ctime = inode->i_mtime = (uint32_t)fs->now;
	inode->i_links_count = 1;
	*out = ino;
	return 0;
}

errcode_t obd_create_file(ext2_filsys fs, ext2_ino_t parent, const char *name, uint64_t size,
			  ext2_ino_t *out)
{
	struct ext2_inode inode;
	ext2_ino_t ino;
	errcode_t r;

	memset(&inode, 0, sizeof(inode));
	r = new_node(fs, parent, name, LINUX_S_IFREG | 0644, EXT2_FT_REG_FILE, &inode, &ino);
	if (r)
		return r;
	r = ext2fs_inode_size_set(fs, &inode, size);
	if (r)
		return r;
	if (ext2fs_has_feature_extents(fs->super)) {
		ext2_extent_handle_t h;
		inode.i_flags &= ~EXT4_EXTENTS_FL;
		r = ext2fs_extent_open2(fs, ino, &inode, &h);
		if (r)
			return r;
		ext2fs_extent_free(h);
	}
	r = ext2fs_write_new_inode(fs, ino, &inode);
	if (r)
		return r;
	*out = ino;
	return 0;
}

errcode_t obd_file_open(ext2_filsys fs, ext2_ino_t ino, ext2_file_t *out)
{
	return ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, out);
}

errcode_t obd_file_write_at(ext2_file_t f, uint64_t off, const void *buf, size_t len)
{
	errcode_t r = ext2fs_file_llseek(f, off, EXT2_SEEK_SET, NULL);
	const char *p = buf;
	while (!r && len > 0) {
		unsigned int chunk = len > (1u << 30) ? (1u << 30) : (unsigned int)len;
		unsigned int done = 0;
		r = ext2fs_file_write(f, p, chunk, &done);
		if (!r && done == 0)
			r = EXT2_ET_SHORT_WRITE;
		p += done;
		len -= done;
	}
	return r;
}

errcode_t obd_file_read_at(ext2_file_t f, uint64_t off, void *buf, size_t len, size_t *got)
{
	unsigned int n = 0;
	errcode_t r = ext2fs_file_llseek(f, off, EXT2_SEEK_SET, NULL);
	if (r)
		return r;
	if (len > (1u << 30))
		len = 1u << 30;
	r = ext2fs_file_read(f, buf, (unsigned int)len, &n);
	*got = n;
	return r;
}

errcode_t obd_file_open_ro(ext2_filsys fs, ext2_ino_t ino, ext2_file_t *out)
{
	return ext2fs_file_open(fs, ino, 0, out);
}

errcode_t obd_file_close(ext2_file_t f)
{
	return ext2fs_file_close(f);
}

errcode_t obd_symlink(ext2_filsys fs, ext2_ino_t parent, const char *name, const char *target,
		      ext2_ino_t *out)
{
	errcode_t r = ext2fs_symlink(fs, parent, 0, name, target);
	if (r == EXT2_ET_DIR_NO_SPACE) {
		r = ext2fs_expand_dir(fs, parent);
		if (r)
			return r;
		r = ext2fs_symlink(fs, parent, 0, name, target);
	}
	if (r)
		return r;
	return ext2fs_lookup(fs, parent, name, (int)strlen(name), NULL, out);
}

errcode_t obd_readlink(ext2_filsys fs, ext2_ino_t ino, char *buf, size_t cap, size_t *len)
{
	struct ext2_inode_large in;
	errcode_t r = read_large(fs, ino, &in);
	uint64_t size;
	if (r)
		return r;
	if (!LINUX_S_ISLNK(in.i_mode))
		return EINVAL;
	size = EXT2_I_SIZE(&in);
	if (size >= cap)
		return ENAMETOOLONG;
	if (in.i_flags & EXT4_INLINE_DATA_FL) {
		size_t n = cap;
		r = ext2fs_inline_data_get(fs, ino, (struct ext2_inode *)&in, buf, &n);
		if (r)
			return r;
	} else if (ext2fs_is_fast_symlink((struct ext2_inode *)&in)) {
		memcpy(buf, (char *)in.i_block, size);
	} else {
		ext2_file_t f;
		unsigned int got = 0;
		r = ext2fs_file_open(fs, ino, 0, &f);
		if (r)
			return r;
		r = ext2fs_file_read(f, buf, (unsigned int)size, &got);
		ext2fs_file_close(f);
		if (r)
			return r;
		if (got != size)
			return EXT2_ET_SHORT_READ;
	}
	*len = size;
	return 0;
}

/* type: 0 fifo, 1 char, 2 block, 3 socket */
errcode_t obd_mknod(ext2_filsys fs, ext2_ino_t parent, const char *name, int type,
		    uint32_t major, uint32_t minor, ext2_ino_t *out)
{
	struct ext2_inode inode;
	ext2_ino_t ino;
	uint32_t mode;
	int ft;
	errcode_t r;

	switch (type) {
	case 0:
		mode = LINUX_S_IFIFO;
		ft = EXT2_FT_FIFO;
		break;
	case 1:
		mode = LINUX_S_IFCHR;
		ft = EXT2_FT_CHRDEV;
		break;
	case 2:
		mode = LINUX_S_IFBLK;
		ft = EXT2_FT_BLKDEV;
		break;
	case 3:
		mode = LINUX_S_IFSOCK;
		ft = EXT2_FT_SOCK;
		break;
	default:
		return EINVAL;
	}
	memset(&inode, 0, sizeof(inode));
	r = new_node(fs, parent, name, mode | 0644, ft, &inode, &ino);
	if (r)
		return r;
	if (major < 256 && minor < 256) {
		inode.i_block[0] = major * 256 + minor;
		inode.i_block[1] = 0;
	} else {
		inode.i_block[0] = 0;
		inode.i_block[1] = (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
	}
	r = ext2fs_write_new_inode(fs, ino, &inode);
	if (r)
		return r;
	*out = ino;
	return 0;
}

static int filetype_of(uint16_t mode)
{
	if (LINUX_S_ISREG(mode))
		return EXT2_FT_REG_FILE;
	if (LINUX_S_ISLNK(mode))
		return EXT2_FT_SYMLINK;
	if (LINUX_S_ISCHR(mode))
		return EXT2_FT_CHRDEV;
	if (LINUX_S_ISBLK(mode))
		return EXT2_FT_BLKDEV;
	if (LINUX_S_ISFIFO(mode))
		return EXT2_FT_FIFO;
	if (LINUX_S_ISSOCK(mode))
		return EXT2_FT_SOCK;
	return EXT2_FT_UNKNOWN;
}

/* A hard link `name` in `parent` to the non-directory `ino`. */
errcode_t obd_hardlink(ext2_filsys fs, ext2_ino_t parent, const char *name, ext2_ino_t ino)
{
	struct ext2_inode_large in;
	errcode_t r = read_large(fs, ino, &in);
	if (r)
		return r;
	if (LINUX_S_ISDIR(in.i_mode))
		return EISDIR;
	if (in.i_links_count >= EXT4_LINK_MAX)
		return EMLINK;
	r = link_expanding(fs, parent, name, ino, filetype_of(in.i_mode));
	if (r)
		return r;
	in.i_links_count++;
	return write_large(fs, ino, &in);
}

/* Drops one reference to `ino` (all of them for a directory) and frees it at zero. */
static errcode_t drop_inode(ext2_filsys fs, ext2_ino_t ino)
{
	struct ext2_inode_large in;
	int isdir;
	errcode_t r = read_large(fs, ino, &in);
	if (r)
		return r;
	isdir = LINUX_S_ISDIR(in.i_mode);
	if (!isdir && in.i_links_count > 1) {
		in.i_links_count--;
		return write_large(fs, ino, &in);
	}
	in.i_links_count = 0;
	r = ext2fs_free_ext_attr(fs, ino, &in);
	if (r)
		return r;
	if (ext2fs_inode_has_valid_blocks2(fs, (struct ext2_inode *)&in)) {
		r = ext2fs_punch(fs, ino, (struct ext2_inode *)&in, NULL, 0, ~0ULL);
		if (r)
			return r;
	}
	in.i_dtime = (uint32_t)fs->now;
	if (!in.i_dtime)
		in.i_dtime = 1;
	r = write_large(fs, ino, &in);
	if (r)
		return r;
	ext2fs_inode_alloc_stats2(fs, ino, -1, isdir);
	return 0;
}

/* Directory listing: the callback gets each entry but "." and "..". */
typedef int (*obd_dirent_fn)(void *ctx, const char *name, size_t len, ext2_ino_t ino);

struct list_ctx {
	obd_dirent_fn fn;
	void *ctx;
	int stopped;
};

static int list_one(struct ext2_dir_entry *d, int offset, int blocksize, char *buf, void *p)
{
	struct list_ctx *c = p;
	int len = ext2fs_dirent_name_len(d);
	(void)offset;
	(void)blocksize;
	(void)buf;
	if (d->inode == 0)
		return 0;
	if ((len == 1 && d->name[0] == '.') || (len == 2 && d->name[0] == '.' && d->name[1] == '.'))
		return 0;
	if (c->fn(c->ctx, d->name, (size_t)len, d->inode)) {
		c->stopped = 1;
		return DIRENT_ABORT;
	}
	return 0;
}

errcode_t obd_list_dir(ext2_filsys fs, ext2_ino_t dir, obd_dirent_fn fn, void *ctx)
{
	struct list_ctx c = { fn, ctx, 0 };
	errcode_t r = ext2fs_dir_iterate(fs, dir, 0, NULL, list_one, &c);
	if (!r && c.stopped)
		return ECANCELED;
	return r;
}

/* Removes the (empty, or non-directory) entry `name` = `ino` from `parent`. The caller
 * empties a directory first. */
errcode_t obd_remove(ext2_filsys fs, ext2_ino_t parent, const char *name, ext2_ino_t ino)
{
	struct ext2_inode_large in;
	errcode_t r = read_large(fs, ino, &in);
	if (r)
		return r;
	r = ext2fs_unlink(fs, parent, name, ino, 0);
	if (r)
		return r;
	if (LINUX_S_ISDIR(in.i_mode)) {
		struct ext2_inode_large p;
		r = read_large(fs, parent, &p);
		if (r)
			return r;
		/* With dir_nlink a count of 1 means "overflowed" and stays 1. */
		if (p.i_links_count > 2)
			p.i_links_count--;
		r = write_large(fs, parent, &p);
		if (r)
			return r;
	}
	return drop_inode(fs, ino);
}

/* Extended attributes. */
errcode_t obd_xattrs_open(ext2_filsys fs, ext2_ino_t ino, struct ext2_xattr_handle **h)
{
	errcode_t r = ext2fs_xattrs_open(fs, ino, h);
	if (r)
		return r;
	r = ext2fs_xattrs_read(*h);
	if (r)
		ext2fs_xattrs_close(h);
	return r;
}

errcode_t obd_xattr_set(struct ext2_xattr_handle *h, const char *key, const void *value,
			size_t len)
{
	return ext2fs_xattr_set(h, key, value, len);
}

typedef int (*obd_xattr_fn)(void *ctx, const char *key, const void *value, size_t len);

struct xattr_ctx {
	obd_xattr_fn fn;
	void *ctx;
};

static int xattr_one(char *name, char *value, size_t len, void *p)
{
	struct xattr_ctx *c = p;
	return c->fn(c->ctx, name, value, len) ? XATTR_ABORT : 0;
}

errcode_t obd_xattr_list(struct ext2_xattr_handle *h, obd_xattr_fn fn, void *ctx)
{
	struct xattr_ctx c = { fn, ctx };
	return ext2fs_xattrs_iterate(h, xattr_one, &c);
}

errcode_t obd_xattrs_close(struct ext2_xattr_handle *h)
{
	return ext2fs_xattrs_close(&h);
}

/* TurboOCI: allocates blocks 0 .. ceil(size / blocksize) of a regular file as initialized
 * extents without writing them (ext2fs_fallocate with FORCE_INIT: the data stays in the
 * original layer's tar), then reports each allocated extent in logical order. */
typedef int (*obd_extent_fn)(void *ctx, uint64_t lblk, uint64_t pblk, uint32_t len);

errcode_t obd_file_allocate(ext2_filsys fs, ext2_ino_t ino, uint64_t size, obd_extent_fn fn,
			    void *ctx)
{
	blk64_t nblocks = (size + fs->blocksize - 1) / fs->blocksize;
	struct ext2_inode inode;
	ext2_extent_handle_t h;
	struct ext2fs_extent ex;
	errcode_t r;
	int op = EXT2_EXTENT_ROOT;

	if (nblocks == 0)
		return 0;
	r = ext2fs_fallocate(fs, EXT2_FALLOCATE_FORCE_INIT, ino, NULL, ~0ULL, 0, nblocks);
	if (r)
		return r;
	r = ext2fs_read_inode(fs, ino, &inode);
	if (r)
		return r;
	r = ext2fs_extent_open2(fs, ino, &inode, &h);
	if (r)
		return r;
	for (;;) {
		r = ext2fs_extent_get(h, op, &ex);
		op = EXT2_EXTENT_NEXT_LEAF;
		if (r == EXT2_ET_EXTENT_NO_NEXT || r == EXT2_ET_NO_CURRENT_NODE) {
			r = 0;
			break;
		}
		if (r)
			break;
		if (!(ex.e_flags & EXT2_EXTENT_FLAGS_LEAF) || ex.e_len == 0)
			continue;
		if (ex.e_flags & EXT2_EXTENT_FLAGS_UNINIT) {
			r = EXT2_ET_INVALID_ARGUMENT;
			break;
		}
		if (fn(ctx, ex.e_lblk, ex.e_pblk, ex.e_len)) {
			r = ECANCELED;
			break;
		}
	}
	ext2fs_extent_free(h);
	return r;
}
