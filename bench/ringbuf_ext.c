// SPDX-License-Identifier: Apache-2.0
/*
 * ringbuf_ext: the C-extension alternative to pktpath's ctypes ring-buffer consumer, for
 * bench/consumer.py only (pktpath ships the ctypes one; see README "Loader").
 *
 *   rb = ringbuf_ext.open(map_fd); records = ringbuf_ext.poll(rb, timeout_ms)  # list of bytes
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <bpf/libbpf.h>

struct consumer {
	struct ring_buffer *rb;
	PyObject *batch;
};

static int on_record(void *ctx, void *data, size_t size)
{
	struct consumer *c = ctx;
	PyObject *record = PyBytes_FromStringAndSize(data, size);

	if (!record || PyList_Append(c->batch, record) < 0) {
		Py_XDECREF(record);
		return -1;
	}
	Py_DECREF(record);
	return 0;
}

static void consumer_free(PyObject *capsule)
{
	struct consumer *c = PyCapsule_GetPointer(capsule, "ringbuf_ext");

	ring_buffer__free(c->rb);
	PyMem_Free(c);
}

static PyObject *rb_open(PyObject *self, PyObject *args)
{
	struct consumer *c;
	int fd;

	if (!PyArg_ParseTuple(args, "i", &fd))
		return NULL;
	c = PyMem_Calloc(1, sizeof(*c));
	if (!c)
		return PyErr_NoMemory();
	c->rb = ring_buffer__new(fd, on_record, c, NULL);
	if (!c->rb) {
		PyMem_Free(c);
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	return PyCapsule_New(c, "ringbuf_ext", consumer_free);
}

static PyObject *rb_poll(PyObject *self, PyObject *args)
{
	PyObject *capsule, *batch;
	struct consumer *c;
	int timeout, err;

	if (!PyArg_ParseTuple(args, "Oi", &capsule, &timeout))
		return NULL;
	c = PyCapsule_GetPointer(capsule, "ringbuf_ext");
	if (!c)
		return NULL;
	batch = PyList_New(0);
	if (!batch)
		return NULL;
	c->batch = batch;
	err = ring_buffer__poll(c->rb, timeout);
	c->batch = NULL;
	if (err < 0 && err != -EINTR) {
		Py_DECREF(batch);
		errno = -err;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	return batch;
}

static PyMethodDef methods[] = {
	{ "open", rb_open, METH_VARARGS, "open(map_fd) -> ring buffer" },
	{ "poll", rb_poll, METH_VARARGS, "poll(rb, timeout_ms) -> list of records" },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "ringbuf_ext", NULL, -1, methods };

PyMODINIT_FUNC PyInit_ringbuf_ext(void)
{
	return PyModule_Create(&module);
}
